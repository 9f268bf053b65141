//! pycocotools parity on `data/rasterise_cases.json`, plus hostile inputs.

use super::*;
use crate::fixtures;

fn cases() -> Vec<Value> {
    let path = fixtures::path("data/rasterise_cases.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["cases"].as_array().unwrap().clone()
}

fn size(case: &Value) -> (usize, usize) {
    (case["height"].as_u64().unwrap() as usize, case["width"].as_u64().unwrap() as usize)
}

/// The fixture's `mask_sum_rows`: one digit string per row.
fn rows(mask: &CountMask) -> Vec<String> {
    mask.counts.chunks(mask.width).map(|row| row.iter().map(|&c| char::from(b'0' + c)).collect()).collect()
}

fn expected_rows(case: &Value) -> Vec<String> {
    case["mask_sum_rows"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_string()).collect()
}

#[test]
fn polygons_match_pycocotools() {
    let cases: Vec<Value> = cases().into_iter().filter(|c| c.get("polygons").is_some()).collect();
    assert!(!cases.is_empty());
    let mut identical = 0;
    for (i, case) in cases.iter().enumerate() {
        let (h, w) = size(case);
        let parts = rles_from_segmentation(&case["polygons"], h, w).unwrap();
        let mask = count_mask(&parts, h, w).unwrap();
        let area: u64 = parts.iter().map(Rle::area).sum();
        let merged = Rle::merge(&parts, false).unwrap();
        let want = &case["rle_merged"];
        let same = rows(&mask) == expected_rows(case)
            && area == case["area"].as_u64().unwrap()
            && merged.to_compressed() == want["counts"].as_str().unwrap()
            && [h as u64, w as u64] == [want["size"][0].as_u64().unwrap(), want["size"][1].as_u64().unwrap()];
        if same {
            identical += 1;
        } else {
            eprintln!("case {i} differs: area {area} vs {}", case["area"]);
        }
    }
    assert_eq!(identical, cases.len(), "polygon cases identical to pycocotools");
}

#[test]
fn rles_match_pycocotools() {
    let cases: Vec<Value> = cases().into_iter().filter(|c| c.get("rle_uncompressed").is_some()).collect();
    assert!(!cases.is_empty());
    for (i, case) in cases.iter().enumerate() {
        let (h, w) = size(case);
        let from_list = rles_from_segmentation(&case["rle_uncompressed"], h, w).unwrap();
        let from_string = rles_from_segmentation(&case["rle_compressed"], h, w).unwrap();
        assert_eq!(from_list, from_string, "case {i}: compressed string decodes to the same runs");
        let rle = &from_list[0];
        assert_eq!(rle.to_compressed(), case["rle_compressed"]["counts"].as_str().unwrap(), "case {i}");
        assert_eq!(rle.area(), case["area"].as_u64().unwrap(), "case {i}");
        let mask = count_mask(&from_list, h, w).unwrap();
        assert_eq!(rows(&mask), expected_rows(case), "case {i}");
        assert_eq!(rle.decode(), mask.counts, "case {i}: decode = one-part count mask");
    }
}

#[test]
fn compressed_string_round_trips_large_and_zero_runs() {
    let counts = vec![0, 70_000, 3, 0, 1, 65_532, 2];
    let total: u32 = counts.iter().sum();
    let rle = Rle::new(1, total as usize, counts.clone()).unwrap();
    let back = Rle::from_compressed(&rle.to_compressed(), 1, total as usize).unwrap();
    assert_eq!(back.counts(), &counts[..]);
}

#[test]
fn merge_union_and_intersection() {
    // 1×6 column: A = pixels 1..3, B = pixels 2..5.
    let a = Rle::new(6, 1, vec![1, 2, 3]).unwrap();
    let b = Rle::new(6, 1, vec![2, 3, 1]).unwrap();
    assert_eq!(Rle::merge(&[a.clone(), b.clone()], false).unwrap().counts(), &[1, 4, 1]);
    assert_eq!(Rle::merge(&[a, b], true).unwrap().counts(), &[2, 1, 3]);
}

#[test]
fn two_parts_count_two_and_png_wraps_to_254() {
    let seg: Value = serde_json::json!([[1, 1, 10, 1, 1, 10], [1, 1, 10, 1, 1, 10]]);
    let parts = rles_from_segmentation(&seg, 12, 12).unwrap();
    let mask = count_mask(&parts, 12, 12).unwrap();
    assert!(mask.counts.contains(&2));
    assert!(mask.png_values().iter().all(|&v| v == 0 || v == 254));
}

#[test]
fn four_numbers_are_a_box() {
    // pycocotools treats a first element of exactly 4 numbers as [x, y, w, h].
    let seg: Value = serde_json::json!([[1, 2, 3, 4]]);
    let parts = rles_from_segmentation(&seg, 10, 10).unwrap();
    assert_eq!(parts[0].area(), 12);
}

#[test]
fn hostile_inputs_are_errors() {
    assert!(Rle::new(3, 3, vec![4, 4]).is_err(), "counts must cover the frame");
    assert!(Rle::new(100_000, 10_000, vec![1_000_000_000]).is_err(), "10^9 pixels refused");
    assert!(Rle::from_compressed("0a~", 2, 2).is_err(), "bad character");
    assert!(Rle::from_compressed("0o", 2, 2).is_err(), "string ends inside a value");
    assert!(Rle::from_polygon(&[0.0, 0.0, 1e12, 0.0, 0.0, 5.0], 10, 10).is_err());
    assert!(Rle::from_polygon(&[0.0, 0.0, f64::NAN, 0.0, 0.0, 5.0], 10, 10).is_err());
    assert!(Rle::from_polygon(&[0.0, 0.0, 1e8, 0.0, 0.0, 1e8], 10, 10).is_err(), "too many steps");
    for seg in [
        serde_json::json!([]),
        serde_json::json!([[1, 2]]),
        serde_json::json!([[1, 2, 3, 4], [1, 2, 3, 4, 5, 6]]),
        serde_json::json!({"size": [2, 2], "counts": [-1, 5]}),
        serde_json::json!({"size": [2], "counts": [4]}),
        serde_json::json!({"size": [2, 2], "counts": 4}),
        serde_json::json!([[0, 0, "x", 1, 2, 2]]),
    ] {
        assert!(rles_from_segmentation(&seg, 4, 4).is_err(), "{seg}");
    }
}
