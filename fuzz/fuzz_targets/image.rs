//! Photo decoding (JPEG, PNG, WebP with the cv2 rules) then the model's
//! pre-processing at a small size, and post-processing back to the photo.
#![no_main]

use detris_io::image::{decode_rgb, postprocess, preprocess, PostPath, MAX_PIXELS, MAX_SIDE};
use libfuzzer_sys::fuzz_target;

const SIZE: usize = 28;

fuzz_target!(|data: &[u8]| {
    let img = match decode_rgb(data, "fuzz.png") {
        Ok(img) => img,
        Err(e) => {
            assert!(e.to_string().starts_with("fuzz.png: "), "{e}");
            return;
        }
    };
    let (w, h) = (img.width(), img.height());
    assert!(w > 0 && h > 0 && w <= MAX_SIDE && h <= MAX_SIDE && u64::from(w) * u64::from(h) <= MAX_PIXELS);
    assert_eq!(img.as_raw().len(), w as usize * h as usize * 3);
    let (input, lb) = preprocess(&img, SIZE);
    assert_eq!(input.len(), 3 * SIZE * SIZE);
    assert!(input.iter().all(|v| v.is_finite()));
    // Back to the photo (kept to small photos so that runs stay fast).
    if u64::from(w) * u64::from(h) <= 1 << 20 {
        let logits: Vec<f32> = (0..49).map(|i| (i as f32 - 24.0) / 4.0).collect();
        for path in [PostPath::Test, PostPath::Demo] {
            let prob = postprocess(&logits, 7, 7, &lb, path).expect("post-processing a valid map");
            assert_eq!((prob.width, prob.height), (w as usize, h as usize));
            assert_eq!(prob.mask.len(), w as usize * h as usize);
            assert!(prob.prob.iter().all(|p| p.is_finite()));
        }
    }
});
