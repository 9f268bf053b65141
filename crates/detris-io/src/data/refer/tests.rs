//! `data/refer_mini` read as the REFER API reads it, checked against
//! `data/refer_mini_expected` (what the official preparation made of it).

use super::*;
use crate::fixtures;

fn mini() -> Refer {
    Refer::load(&fixtures::path("data/refer_mini"), "refcoco", None).unwrap()
}

fn expected_split(split: &str) -> Vec<serde_json::Value> {
    let path = fixtures::path(&format!("data/refer_mini_expected/anns/refcoco/{split}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// (width, height, grey pixels) of an 8-bit grey PNG.
pub(crate) fn decode_grey_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.color_type, info.bit_depth), (png::ColorType::Grayscale, png::BitDepth::Eight));
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

#[test]
fn refs_of_each_split_in_official_order() {
    let refer = mini();
    assert_eq!(refer.source.name, "refcoco");
    let mut total = 0;
    for split in &refer.source.splits {
        let want: Vec<i64> = expected_split(split).iter().map(|r| r["segment_id"].as_i64().unwrap()).collect();
        let got: Vec<i64> = refer.refs_in_split(split).unwrap().iter().map(|r| r.ref_id).collect();
        assert_eq!(got, want, "split {split}");
        total += want.len();
    }
    assert_eq!(refer.refs.len(), total);
    assert_eq!(
        refer.refs_in_split("test").unwrap().len(),
        expected_split("testA").len() + expected_split("testB").len()
    );
    assert!(refer.refs_in_split("bogus").is_err());
}

#[test]
fn sentences_images_and_raw_text_decode() {
    let refer = mini();
    for split in &refer.source.splits {
        for (r, want) in refer.refs_in_split(split).unwrap().into_iter().zip(expected_split(split)) {
            assert_eq!(refer.image(r).unwrap().file_name, want["img_name"].as_str().unwrap());
            let sents: Vec<(i64, &str)> = r.sentences.iter().map(|s| (s.sent_id, s.sent.as_str())).collect();
            let want_sents: Vec<(i64, &str)> = want["sentences"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| (s["sent_id"].as_i64().unwrap(), s["sent"].as_str().unwrap()))
                .collect();
            assert_eq!(sents, want_sents, "ref {}", r.ref_id);
            assert!(refer.image_path(refer.image(r).unwrap()).is_file());
        }
    }
    // A raw sentence stored as a unicode string (non-ASCII) comes through.
    assert!(refer.refs.iter().flat_map(|r| &r.sentences).any(|s| s.raw.as_deref().is_some_and(|t| !t.is_ascii())));
}

#[test]
fn masks_match_the_official_pngs() {
    let refer = mini();
    let mut two_part_pixels = 0;
    for r in &refer.refs {
        let mask = refer.mask(r).unwrap();
        let png = fixtures::path(&format!("data/refer_mini_expected/masks/refcoco/{}.png", r.ref_id));
        let (w, h, grey) = decode_grey_png(&png);
        assert_eq!((mask.width, mask.height), (w as usize, h as usize), "ref {}", r.ref_id);
        assert!(mask.png_values() == grey, "ref {}: mask differs from the official PNG", r.ref_id);
        two_part_pixels += mask.counts.iter().filter(|&&c| c == 2).count();
    }
    assert!(two_part_pixels > 0, "the fixture has overlapping parts (254 pixels)");
}

#[test]
fn unknown_folders_need_split_by_and_missing_files_are_named() {
    let root = fixtures::path("data/refer_mini");
    assert!(Refer::load(&root, "refcocog", None).is_err());
    let err = Refer::load(&root, "refcoco", Some("google")).err().unwrap().to_string();
    assert!(err.contains("refcoco_g") || err.contains("valid"), "{err}");
    let err = Refer::load(&root, "elsewhere", Some("unc")).err().unwrap().to_string();
    assert!(err.contains("refs(unc).p"), "{err}");
    assert!(ReferSource::resolve("../x", Some("unc")).is_err());
}

#[test]
fn hostile_pickles_are_errors() {
    assert!(parse_refs(b"not a pickle").is_err());
    // A protocol-2 pickle of [{}]: a ref without fields.
    let err = parse_refs(b"\x80\x02]q\x00}q\x01a.").unwrap_err().to_string();
    assert!(err.contains("ref #0"), "{err}");
}
