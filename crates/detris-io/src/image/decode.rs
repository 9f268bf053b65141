//! Decoding JPEG, PNG and WebP the way the official `cv2.imread(path)` (IMREAD_COLOR) does:
//! EXIF orientation applied, alpha channels dropped (not composited), grey replicated,
//! 16-bit samples reduced by dropping the low byte (libpng's `png_set_strip_16`), RGB out.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::Rgb;
use crate::error::{read_file, Error, Result};

/// Largest accepted width or height, in pixels (a header claiming more is refused before decoding).
pub const MAX_SIDE: u32 = 20_000;
/// Largest accepted pixel count (100 MP; 300 MB as RGB u8).
pub const MAX_PIXELS: u64 = 100_000_000;

/// Reads and decodes a photo; errors name the file.
pub fn load_rgb(path: impl AsRef<Path>) -> Result<Rgb> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let img = decode_checked(&bytes).map_err(|what| Error::invalid(path, what))?;
    Ok(to_rgb8_like_cv2(img))
}

/// A photo's size as [`load_rgb`] would give it (EXIF orientation applied), read from its
/// header without decoding the pixels; the same format and size checks. Errors name the file.
pub fn photo_size(path: impl AsRef<Path>) -> Result<(u32, u32)> {
    let path = path.as_ref();
    let reader = ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let bad = |what: String| Error::invalid(path, what);
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
        Some(other) => return Err(bad(format!("unsupported image format {other:?} (JPEG, PNG or WebP)"))),
        None => return Err(bad("not a JPEG, PNG or WebP image".into())),
    }
    let mut decoder = reader.into_decoder().map_err(|e| bad(format!("corrupt image header: {e}")))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h).map_err(bad)?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    use image::metadata::Orientation::*;
    Ok(match orientation {
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH => (h, w),
        _ => (w, h),
    })
}

/// Decodes an in-memory JPEG, PNG or WebP to 8-bit RGB (see the module doc for the cv2 rules).
/// `name` is used in error messages (a file name, an upload's name, ...).
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<Rgb> {
    let img = decode_checked(bytes).map_err(|what| Error::input(format!("{name}: {what}")))?;
    Ok(to_rgb8_like_cv2(img))
}

/// Decodes with the size limits checked from the header first and EXIF orientation applied;
/// the error says what is wrong (the caller names the file).
pub(super) fn decode_checked(bytes: &[u8]) -> std::result::Result<DynamicImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| format!("cannot read: {e}"))?;
    match reader.format() {
        Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => {}
        Some(other) => return Err(format!("unsupported image format {other:?} (JPEG, PNG or WebP)")),
        None => return Err("not a JPEG, PNG or WebP image".into()),
    }
    let mut reader = reader;
    reader.limits(decoder_limits());
    let mut decoder = reader.into_decoder().map_err(|e| format!("corrupt image header: {e}"))?;
    let (w, h) = decoder.dimensions();
    check_dimensions(w, h)?;
    // cv2 ignores an unreadable EXIF block rather than failing the image.
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| format!("corrupt or truncated image data: {e}"))?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Refuses empty images and dimensions over [`MAX_SIDE`] / [`MAX_PIXELS`].
fn check_dimensions(w: u32, h: u32) -> std::result::Result<(), String> {
    if w == 0 || h == 0 {
        return Err(format!("image has no pixels ({w}×{h})"));
    }
    if w > MAX_SIDE || h > MAX_SIDE || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!(
            "image claims {w}×{h} pixels, over the limit of {MAX_SIDE} per side and {MAX_PIXELS} in all"
        ));
    }
    Ok(())
}

/// Dimensions are checked by us (for a clear message); the decoder keeps an allocation cap:
/// the largest accepted image as RGBA16 plus slack for the decoder's own buffers.
fn decoder_limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    limits
}

/// cv2 IMREAD_COLOR conversions: grey replicated, alpha dropped, 16-bit → high byte.
fn to_rgb8_like_cv2(img: DynamicImage) -> Rgb {
    let high_byte = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(i) => map_pixels(&i, |p| [p[0], p[1], p[2]]),
        DynamicImage::ImageLuma8(i) => map_pixels(&i, |p| [p[0]; 3]),
        DynamicImage::ImageLumaA8(i) => map_pixels(&i, |p| [p[0]; 3]),
        DynamicImage::ImageRgb16(i) => map_pixels(&i, |p| p.0.map(high_byte)),
        DynamicImage::ImageRgba16(i) => map_pixels(&i, |p| [p[0], p[1], p[2]].map(high_byte)),
        DynamicImage::ImageLuma16(i) => map_pixels(&i, |p| [high_byte(p[0]); 3]),
        DynamicImage::ImageLumaA16(i) => map_pixels(&i, |p| [high_byte(p[0]); 3]),
        other => other.to_rgb8(),
    }
}

/// Builds an RGB image of the same size with `f` applied to every pixel.
fn map_pixels<P: image::Pixel>(src: &image::ImageBuffer<P, Vec<P::Subpixel>>, f: impl Fn(&P) -> [u8; 3]) -> Rgb {
    let mut out = Vec::with_capacity(src.width() as usize * src.height() as usize * 3);
    for p in src.pixels() {
        out.extend_from_slice(&f(p));
    }
    // The length is width*height*3 by construction, so this cannot fail.
    Rgb::from_raw(src.width(), src.height(), out).unwrap_or_default()
}

/// cv2 IMREAD_GRAYSCALE for masks: grey kept, alpha dropped, 16-bit → high byte, colour
/// through libpng's `png_set_rgb_to_gray_fixed(0.299, 0.587)` integer weights.
pub(super) fn to_grey8_like_cv2(img: DynamicImage) -> image::GrayImage {
    let rgb_to_grey = |r: u8, g: u8, b: u8| -> u8 {
        // libpng: 15-bit coefficients, blue = 32768 - red - green, rounded.
        const R: u32 = 9798;
        const G: u32 = 19235;
        const B: u32 = 32768 - R - G;
        ((R * u32::from(r) + G * u32::from(g) + B * u32::from(b) + 16384) >> 15) as u8
    };
    let high_byte = |v: u16| (v >> 8) as u8;
    match img {
        DynamicImage::ImageLuma8(g) => g,
        DynamicImage::ImageLumaA8(i) => map_grey(&i, |p| p[0]),
        DynamicImage::ImageLuma16(i) => map_grey(&i, |p| high_byte(p[0])),
        DynamicImage::ImageLumaA16(i) => map_grey(&i, |p| high_byte(p[0])),
        other => {
            let rgb = to_rgb8_like_cv2(other);
            map_grey(&rgb, |p| rgb_to_grey(p[0], p[1], p[2]))
        }
    }
}

fn map_grey<P: image::Pixel>(src: &image::ImageBuffer<P, Vec<P::Subpixel>>, f: impl Fn(&P) -> u8) -> image::GrayImage {
    let out: Vec<u8> = src.pixels().map(f).collect();
    image::GrayImage::from_raw(src.width(), src.height(), out).unwrap_or_default()
}
