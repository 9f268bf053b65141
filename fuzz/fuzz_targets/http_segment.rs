//! The body of `POST /v1/segment` as `detris serve` parses it (multipart or
//! JSON, sentence limits, image header and decoding). Input: the content type,
//! a newline, then the body. Every outcome is an accepted request that keeps
//! the limits, or a refusal with a 4xx status and a message.
#![no_main]

use detris_io::image::MIN_SIDE;
use detris_io::request::{parse_segment_request, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or(&[]);
    let limits = Limits {
        max_image_pixels: 4_000_000,
        max_image_side: 4_000,
        max_work_pixels: 8_000_000,
        max_sentences: 4,
        max_sentence_chars: 256,
        ..Limits::default()
    };
    match parse_segment_request(&content_type, body.to_vec(), &limits, 17) {
        Ok(req) => {
            let (w, h) = req.photo.dimensions();
            let pixels = u64::from(w) * u64::from(h);
            assert!(w >= MIN_SIDE && h >= MIN_SIDE && w.max(h) <= limits.max_image_side);
            assert!(pixels <= limits.max_image_pixels);
            assert!(pixels * req.texts.len() as u64 <= limits.max_work_pixels);
            assert!(!req.texts.is_empty() && req.texts.len() <= limits.max_sentences);
            assert_eq!(req.token_counts.len(), req.texts.len());
            for (t, &n) in req.texts.iter().zip(&req.token_counts) {
                assert!(!t.trim().is_empty() && t.chars().count() <= limits.max_sentence_chars);
                assert!(n >= 2);
            }
        }
        Err(r) => {
            assert!((400..500).contains(&r.status), "status {} for {}", r.status, r.error);
            assert!(!r.error.is_empty());
        }
    }
});
