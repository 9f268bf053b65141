//! COCO segmentation → mask (polygons, boxes, RLE lists, compressed RLE) at a
//! bounded frame. Input: height and width (2 bytes each, taken mod 512, plus
//! 1), then the `segmentation` JSON. Checks the masks against each other:
//! compressed strings round-trip, areas match the decoded pixels, a merge is
//! the union (or intersection) of its parts, the count mask is their sum.
#![no_main]

use detris_io::data::coco_mask::{count_mask, rles_from_segmentation, Rle};
use libfuzzer_sys::fuzz_target;

/// Masks decoded pixel by pixel only up to this size (runs stay fast).
const DECODE_PIXELS: usize = 1 << 18;

fuzz_target!(|data: &[u8]| {
    let [h0, h1, w0, w1, json @ ..] = data else { return };
    let height = 1 + usize::from(u16::from_le_bytes([*h0, *h1])) % 512;
    let width = 1 + usize::from(u16::from_le_bytes([*w0, *w1])) % 512;
    let Ok(seg) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let Ok(parts) = rles_from_segmentation(&seg, height, width) else {
        return;
    };
    for rle in &parts {
        let pixels = rle.height() * rle.width();
        assert_eq!(rle.counts().iter().map(|&c| c as usize).sum::<usize>(), pixels, "runs cover the frame");
        let again = Rle::from_compressed(&rle.to_compressed(), rle.height(), rle.width()).expect("own string");
        assert_eq!(&again, rle, "compressed round trip");
        if pixels <= DECODE_PIXELS {
            let decoded = rle.decode();
            assert_eq!(decoded.len(), pixels);
            assert!(decoded.iter().all(|&v| v <= 1));
            assert_eq!(decoded.iter().map(|&v| u64::from(v)).sum::<u64>(), rle.area(), "area");
        }
    }
    let same_frame = parts.iter().all(|r| (r.height(), r.width()) == (height, width));
    match count_mask(&parts, height, width) {
        Ok(sum) => {
            assert!(same_frame);
            if height * width <= DECODE_PIXELS {
                let mut want = vec![0u8; height * width];
                for r in &parts {
                    for (w, v) in want.iter_mut().zip(r.decode()) {
                        *w = w.wrapping_add(v);
                    }
                }
                assert_eq!(sum.counts, want, "count mask is the sum of the parts");
            }
        }
        Err(_) => assert!(!same_frame),
    }
    if !same_frame || height * width > DECODE_PIXELS {
        return;
    }
    for intersect in [false, true] {
        let merged = Rle::merge(&parts, intersect).expect("same-sized parts");
        assert_eq!(merged.counts().iter().map(|&c| c as usize).sum::<usize>(), height * width);
        let got = merged.decode();
        let decoded: Vec<Vec<u8>> = parts.iter().map(Rle::decode).collect();
        for (i, &g) in got.iter().enumerate() {
            let want = if intersect { decoded.iter().all(|d| d[i] == 1) } else { decoded.iter().any(|d| d[i] == 1) };
            assert_eq!(g == 1, want, "merge (intersect: {intersect}) at pixel {i}");
        }
    }
});
