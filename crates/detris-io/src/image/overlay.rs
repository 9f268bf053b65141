//! A mask drawn over its photo: tinted inside, outlined along its edge.

use super::png::check_len;
use super::Rgb;
use crate::error::Result;

/// Half-width of the outline drawn by [`overlay`], pixels.
const OUTLINE_PX: usize = 2;

/// The photo with the mask tinted 50 % towards `color` and a 2-pixel outline of the mask's
/// boundary (its inner edge) in the solid colour. `mask` is `height × width`, row-major.
pub fn overlay(img: &Rgb, mask: &[bool], color: [u8; 3]) -> Result<Rgb> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    check_len("mask", mask.len(), w, h)?;
    let inner = erode(mask, w, h, OUTLINE_PX);
    let mut out = img.clone();
    for (i, px) in out.pixels_mut().enumerate() {
        if !mask[i] {
            continue;
        }
        for c in 0..3 {
            px[c] = if inner[i] { (u16::from(px[c]) + u16::from(color[c])).div_ceil(2) as u8 } else { color[c] };
        }
    }
    Ok(out)
}

/// Square erosion of radius `r` (separable); outside the frame counts as foreground, so a
/// mask touching the border is not outlined along the frame.
fn erode(mask: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    let mut horiz = vec![false; w * h];
    for y in 0..h {
        let row = &mask[y * w..y * w + w];
        for x in 0..w {
            horiz[y * w + x] = row[x.saturating_sub(r)..(x + r + 1).min(w)].iter().all(|&m| m);
        }
    }
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (y.saturating_sub(r)..(y + r + 1).min(h)).all(|yy| horiz[yy * w + x]);
        }
    }
    out
}
