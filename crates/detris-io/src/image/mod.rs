//! Images in and out of DETRIS, as the official code does it:
//!
//! file → [`load_rgb`] (cv2.imread: EXIF orientation, alpha dropped, 8-bit RGB)
//! → [`preprocess`] (letterbox `warpAffine` INTER_CUBIC with the CLIP-mean border, CLIP normalisation)
//! → model → logits → [`postprocess`] (upsample, inverse warp, threshold 0.35)
//! → [`mask_png`] / [`overlay`].
//!
//! The warps reproduce the float computation of the OpenCV that made the fixtures (see
//! `warp.rs`): the fixture's letterboxed pixels are bit-identical to cv2's (on other photos all
//! but a few per million, where OpenCV's own code paths disagree too), the inverse warp agrees
//! to 1e-6.

mod decode;
mod letterbox;
mod overlay;
mod png;
mod postprocess;
mod preprocess;
mod upsample;
mod warp;

pub use decode::{decode_rgb, load_rgb, photo_size, MAX_PIXELS, MAX_SIDE};
pub use letterbox::Letterbox;
pub use overlay::overlay;
pub use png::{mask_png, read_mask_png, rgb_png, write_png_atomic};
pub use postprocess::{postprocess, unwarp_prob, PostPath, Prob, THRESHOLD};
pub use preprocess::{normalize_clip, preprocess, warp_image, warp_mask, CLIP_MEAN, CLIP_STD};
pub use upsample::{sigmoid, upsample_bicubic_align_corners, upsample_bilinear_align_corners};

/// Smallest photo side accepted: below it the letterbox has nothing to show.
pub const MIN_SIDE: u32 = 8;

/// Refuses a photo under [`MIN_SIDE`] on either side (the caller names the file).
pub fn check_min_side(photo: &Rgb) -> crate::Result<()> {
    let (w, h) = photo.dimensions();
    if w < MIN_SIDE || h < MIN_SIDE {
        return Err(crate::Error::input(format!(
            "the image is {w}×{h} pixels; detris needs at least {MIN_SIDE} pixels on each side"
        )));
    }
    Ok(())
}

/// A decoded photo: 8-bit RGB, row-major HWC (`width × height × 3` bytes).
pub type Rgb = image::RgbImage;
