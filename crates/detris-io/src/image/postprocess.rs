//! Logits → probability map and mask on the original photo, both official paths
//! (`test.py` and `demo.py`, see `docs/architecture.md`).

use super::letterbox::invert_for_warp;
use super::upsample::{sigmoid, upsample_bicubic_align_corners, upsample_bilinear_align_corners};
use super::warp::warp_cubic_f32;
use super::Letterbox;
use crate::error::{Error, Result};

/// Foreground when the probability is above this (all official metrics and visualisations).
pub const THRESHOLD: f32 = 0.35;

/// Which official script's post-processing to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum PostPath {
    /// `test.py`: sigmoid → bicubic (align_corners) to `size × size` → inverse warp.
    Test,
    /// `demo.py`: bilinear (align_corners) on the logits → sigmoid → inverse warp.
    Demo,
}

/// A prediction on the photo: `height × width` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Prob {
    pub width: usize,
    pub height: usize,
    /// Probability per pixel (bicubic overshoot can leave it slightly outside [0, 1]).
    pub prob: Vec<f32>,
    /// `prob > THRESHOLD`.
    pub mask: Vec<bool>,
}

/// Logits `lh × lw` (row-major f32) → probability and mask at the photo's `src_w × src_h`.
pub fn postprocess(logits: &[f32], lh: usize, lw: usize, lb: &Letterbox, path: PostPath) -> Result<Prob> {
    if lh == 0 || lw == 0 || Some(logits.len()) != lh.checked_mul(lw) {
        return Err(Error::input(format!("logits have {} values, expected a non-empty {lh}×{lw} map", logits.len())));
    }
    let s = lb.size;
    let square = match path {
        PostPath::Test => {
            let p: Vec<f32> = logits.iter().map(|&v| sigmoid(v)).collect();
            upsample_bicubic_align_corners(&p, lh, lw, s, s)
        }
        PostPath::Demo => {
            let mut up = upsample_bilinear_align_corners(logits, lh, lw, s, s);
            up.iter_mut().for_each(|v| *v = sigmoid(*v));
            up
        }
    };
    let prob = unwarp_prob(&square, lb)?;
    let mask = prob.iter().map(|&p| p > THRESHOLD).collect();
    Ok(Prob { width: lb.src_w, height: lb.src_h, prob, mask })
}

/// `cv2.warpAffine(p, mat_inv, (src_w, src_h), INTER_CUBIC, borderValue=0)` of a
/// `size × size` f32 map back onto the photo (`src_h × src_w`).
pub fn unwarp_prob(square: &[f32], lb: &Letterbox) -> Result<Vec<f32>> {
    if Some(square.len()) != lb.size.checked_mul(lb.size) {
        return Err(Error::input(format!("map has {} values, expected {s}×{s}", square.len(), s = lb.size)));
    }
    Ok(warp_cubic_f32(square, lb.size, lb.size, &invert_for_warp(&lb.mat_inv), lb.src_w, lb.src_h, 0.0))
}
