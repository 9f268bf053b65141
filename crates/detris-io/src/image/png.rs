//! PNG out (masks, photos, written atomically) and ground-truth masks in.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder};

use super::decode::{decode_checked, to_grey8_like_cv2};
use super::Rgb;
use crate::error::{read_file, Error, Result};

/// Refuses a `w × h` image whose pixel count is not `len` (or is empty).
pub(super) fn check_len(what: &str, len: usize, w: usize, h: usize) -> Result<()> {
    if Some(len) == w.checked_mul(h) && w > 0 && h > 0 {
        Ok(())
    } else {
        Err(Error::input(format!("{what} has {len} pixels, expected a non-empty {w}×{h} image")))
    }
}

fn encode_png(data: &[u8], w: usize, h: usize, color: ExtendedColorType) -> Result<Vec<u8>> {
    let (w32, h32) = match (u32::try_from(w), u32::try_from(h)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Err(Error::input(format!("{w}×{h} is too large for a PNG"))),
    };
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(data, w32, h32, color)
        .map_err(|e| Error::input(format!("cannot encode a {w}×{h} PNG: {e}")))?;
    Ok(out)
}

/// The mask as an 8-bit grey PNG (`w × h`, 255 = foreground, 0 = background), like the
/// official demo's `pred*255`.
pub fn mask_png(mask: &[bool], w: usize, h: usize) -> Result<Vec<u8>> {
    check_len("mask", mask.len(), w, h)?;
    let grey: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
    encode_png(&grey, w, h, ExtendedColorType::L8)
}

/// The photo as an 8-bit RGB PNG.
pub fn rgb_png(img: &Rgb) -> Result<Vec<u8>> {
    encode_png(img.as_raw(), img.width() as usize, img.height() as usize, ExtendedColorType::Rgb8)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so a
/// reader never sees a half-written file.
pub fn write_png_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp: PathBuf = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A ground-truth mask as cv2 `IMREAD_GRAYSCALE` reads it: `(grey, width, height)`, row-major
/// u8. Values are kept as stored (the official masks are part-count × 255 in u8, so 254 occurs);
/// any non-zero value is foreground.
pub fn read_mask_png(path: impl AsRef<Path>) -> Result<(Vec<u8>, usize, usize)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let img = decode_checked(&bytes).map_err(|what| Error::invalid(path, what))?;
    let grey = to_grey8_like_cv2(img);
    let (w, h) = (grey.width() as usize, grey.height() as usize);
    Ok((grey.into_raw(), w, h))
}
