//! Model input from a photo and the soft training target from a mask.

use super::letterbox::invert_for_warp;
use super::warp::{warp_cubic_u8, warp_linear_u8, ImageU8};
use super::{Letterbox, Rgb};
use crate::error::{Error, Result};

/// CLIP's per-channel mean (RGB), also used for DINOv2 in DETRIS.
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
/// CLIP's per-channel standard deviation (RGB).
#[allow(clippy::excessive_precision)] // the official constants, verbatim
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// The letterbox border: `borderValue = mean*255` as floats, which cv2 rounds half to even to
/// u8 (`saturate_cast<uchar>`) for a u8 image: (123, 117, 104).
fn border_u8() -> [u8; 3] {
    CLIP_MEAN.map(|m| (f64::from(m) * 255.0).round_ties_even().clamp(0.0, 255.0) as u8)
}

/// `cv2.warpAffine(img, mat, (size, size), INTER_CUBIC, borderValue=mean*255)`:
/// `size × size × 3` u8, HWC, RGB.
pub fn warp_image(img: &Rgb, lb: &Letterbox) -> Vec<u8> {
    let src = ImageU8 { data: img.as_raw(), w: img.width() as usize, h: img.height() as usize, cn: 3 };
    warp_cubic_u8(&src, &invert_for_warp(&lb.mat), lb.size, lb.size, &border_u8())
}

/// HWC u8 (`size × size × 3`) → CHW f32 `(v/255 - mean) / std`, in f32 like the official
/// `img.float().div_(255.).sub_(mean).div_(std)`. Missing trailing pixels read as 0.
pub fn normalize_clip(hwc: &[u8], size: usize) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in hwc.chunks_exact(3).take(plane).enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px[c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    }
    out
}

/// Photo → model input `(3, size, size)` f32 CHW, and the letterbox to map predictions back.
pub fn preprocess(img: &Rgb, size: usize) -> (Vec<f32>, Letterbox) {
    let lb = Letterbox::new(img.width() as usize, img.height() as usize, size);
    (normalize_clip(&warp_image(img, &lb), size), lb)
}

/// Training target: `cv2.warpAffine(mask, mat, (size, size), INTER_LINEAR, borderValue=0) / 255`,
/// `size × size` f32 in [0, 1] (soft at the edges). `mask` is `w × h` grey u8, row-major.
pub fn warp_mask(mask: &[u8], w: usize, h: usize, lb: &Letterbox) -> Result<Vec<f32>> {
    if Some(mask.len()) != w.checked_mul(h) {
        return Err(Error::input(format!("mask has {} bytes, expected {w}×{h}", mask.len())));
    }
    let src = ImageU8 { data: mask, w, h, cn: 1 };
    let warped = warp_linear_u8(&src, &invert_for_warp(&lb.mat), lb.size, lb.size, &[0]);
    // numpy divides in f64; the model then casts to f32.
    Ok(warped.into_iter().map(|v| (f64::from(v) / 255.0) as f32).collect())
}
