//! The body of `POST /v1/segment` as `detris serve` parses it (multipart or
//! JSON, sentence limits, image header and decoding). Input: the content type,
//! a newline, then the body. Every outcome is an accepted request that keeps
//! the limits, or a refusal with a 4xx status and a message.
#![no_main]

use detris_io::image::MIN_SIDE;
use detris_io::request::{parse_segment_request, RequestLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let content_type = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or(&[]);
    let limits = RequestLimits {
        max_image_pixels: 4_000_000,
        max_sentences: 4,
        max_sentence_bytes: 256,
        max_sentence_tokens: 40,
    };
    match parse_segment_request(&content_type, body.to_vec(), &limits, 17) {
        Ok(req) => {
            let (w, h) = req.photo.dimensions();
            assert!(w >= MIN_SIDE && h >= MIN_SIDE && u64::from(w) * u64::from(h) <= limits.max_image_pixels);
            assert!(!req.texts.is_empty() && req.texts.len() <= limits.max_sentences);
            assert_eq!(req.token_counts.len(), req.texts.len());
            for (t, &n) in req.texts.iter().zip(&req.token_counts) {
                assert!(!t.trim().is_empty() && t.len() <= limits.max_sentence_bytes);
                assert!((2..=limits.max_sentence_tokens).contains(&n));
            }
        }
        Err(r) => {
            assert!((400..500).contains(&r.status), "status {} for {}", r.status, r.error);
            assert!(!r.error.is_empty());
        }
    }
});
