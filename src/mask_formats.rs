//! A sentence's result as files and wire formats: mask and overlay PNGs, the probability
//! heat map, COCO RLE and bounding box. `detris segment`, the batch runner, `detris eval`
//! and the server all draw through here, so the same mask looks the same everywhere.

use detris_io::data::coco_mask::Rle;
use detris_io::image::{self, Rgb};
use serde::{Deserialize, Serialize};

/// Overlay colours, one per sentence (cycled).
pub const PALETTE: [[u8; 3]; 6] =
    [[255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255], [0, 220, 220]];

/// The overlay colour of sentence `index` (0-based).
pub fn colour(index: usize) -> [u8; 3] {
    PALETTE[index % PALETTE.len()]
}

/// One sentence's pictures, PNG-encoded.
pub struct SentencePngs {
    /// 8-bit grey, 0/255, the photo's size.
    pub mask: Vec<u8>,
    /// The photo with the mask tinted and outlined in the sentence's colour.
    pub overlay: Vec<u8>,
}

/// The mask and overlay PNGs of sentence `index` on `photo`; `mask` is `height × width`.
pub fn sentence_pngs(photo: &Rgb, mask: &[bool], index: usize) -> detris_io::Result<SentencePngs> {
    let (w, h) = (photo.width() as usize, photo.height() as usize);
    let overlay = image::overlay(photo, mask, colour(index))?;
    Ok(SentencePngs { mask: image::mask_png(mask, w, h)?, overlay: image::rgb_png(&overlay)? })
}

/// A probability map (`height × width`, row-major) as an RGB PNG heat map: dark blue at 0
/// through cyan, yellow to red at 1 (values outside [0, 1], from bicubic overshoot, are
/// clamped).
pub fn probability_png(prob: &[f32], width: usize, height: usize) -> detris_io::Result<Vec<u8>> {
    if Some(prob.len()) != width.checked_mul(height) || width == 0 || height == 0 {
        return Err(detris_io::Error::input(format!(
            "probability map has {} values, expected a non-empty {width}×{height} map",
            prob.len()
        )));
    }
    let (w, h) = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(detris_io::Error::input(format!("{width}×{height} is too large for a PNG")));
    };
    let pixels: Vec<u8> = prob.iter().flat_map(|&p| heat(p)).collect();
    let img = Rgb::from_raw(w, h, pixels).expect("3 bytes per pixel");
    image::rgb_png(&img)
}

/// The jet colour map: piecewise linear blue → cyan → yellow → red.
fn heat(p: f32) -> [u8; 3] {
    let p = if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
    let channel = |centre: f32| (255.0 * (1.5 - (4.0 * p - centre).abs()).clamp(0.0, 1.0)).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// pycocotools `mask.encode` of a row-major mask: runs down the columns, starting with
/// background (a leading 0 run when pixel (0,0) is foreground).
pub fn rle_encode(mask: &[bool], width: usize, height: usize) -> detris_io::Result<Rle> {
    if Some(mask.len()) != width.checked_mul(height) {
        return Err(detris_io::Error::input(format!("mask has {} pixels, expected {width}×{height}", mask.len())));
    }
    let mut counts = Vec::new();
    let (mut current, mut run) = (false, 0u32);
    for x in 0..width {
        for y in 0..height {
            let v = mask[y * width + x];
            if v != current {
                counts.push(run);
                current = v;
                run = 0;
            }
            run += 1;
        }
    }
    counts.push(run);
    Rle::new(height, width, counts)
}

/// A mask as COCO RLE in JSON, `{"size": [height, width], "counts": "..."}` (column-major
/// runs, background first, the compressed string), which `pycocotools.mask.decode` reads as is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RleJson {
    pub size: [usize; 2],
    pub counts: String,
}

impl RleJson {
    /// The RLE of a row-major `height × width` mask.
    pub fn encode(mask: &[bool], width: usize, height: usize) -> detris_io::Result<RleJson> {
        Ok(RleJson { size: [height, width], counts: rle_encode(mask, width, height)?.to_compressed() })
    }
}

/// pycocotools `mask.toBbox`: `[x, y, width, height]` of the foreground, all 0 when empty.
pub fn bounding_box(mask: &[bool], width: usize) -> [usize; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % width, i / width);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    if x0 == usize::MAX {
        [0; 4]
    } else {
        [x0, y0, x1 - x0 + 1, y1 - y0 + 1]
    }
}

/// A sentence as a short file-name part: lower-case letters and digits, `-` between words,
/// at most 40 characters.
pub fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(|c| c.to_lowercase()) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_and_rle_of_a_small_mask() {
        // 4 wide, 3 high; foreground at (1,0), (2,1), (1,2).
        let mut mask = vec![false; 12];
        for (x, y) in [(1, 0), (2, 1), (1, 2)] {
            mask[y * 4 + x] = true;
        }
        assert_eq!(bounding_box(&mask, 4), [1, 0, 2, 3]);
        assert_eq!(bounding_box(&[false; 12], 4), [0; 4]);
        let rle = rle_encode(&mask, 4, 3).unwrap();
        // Down the columns: 3 bg | fg bg fg | bg fg bg | 3 bg.
        assert_eq!(rle.counts(), &[3, 1, 1, 1, 1, 1, 4]);
        let back: Vec<bool> = rle.decode().iter().map(|&v| v == 1).collect();
        assert_eq!(back, mask);
    }

    #[test]
    fn heat_map_ends_and_middle() {
        assert_eq!(heat(0.0), [0, 0, 128]);
        assert_eq!(heat(1.0), [128, 0, 0]);
        assert_eq!(heat(0.5), [128, 255, 128]);
        assert_eq!(heat(f32::NAN), heat(0.0));
        assert_eq!(heat(1.2), heat(1.0));
    }
}
