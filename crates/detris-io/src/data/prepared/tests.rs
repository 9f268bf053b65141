//! `prepare` on `data/refer_mini` reproduces `data/refer_mini_expected`;
//! `read_split` reads it back.

use super::*;
use crate::data::refer::tests::decode_grey_png;
use crate::fixtures;

fn expected_root() -> PathBuf {
    fixtures::path("data/refer_mini_expected")
}

/// A fresh folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("detris-data-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn split_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(expected_root().join("anns/refcoco"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn prepare_reproduces_the_official_files() {
    let out = TempDir::new("prepare");
    let report = prepare(&fixtures::path("data/refer_mini"), "refcoco", Some("unc"), &out.0).unwrap();
    assert_eq!(report.dataset, "refcoco");
    let mut written: Vec<String> = report.splits.iter().map(|s| s.0.clone()).collect();
    written.sort();
    assert_eq!(written, split_names());
    for split in split_names() {
        let want = std::fs::read(ann_path(&expected_root(), "refcoco", &split)).unwrap();
        let got = std::fs::read(ann_path(&out.0, "refcoco", &split)).unwrap();
        let parse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(parse(&got), parse(&want), "{split}.json");
        assert_eq!(got, want, "{split}.json byte for byte (Python json.dump format)");
    }
    let mut masks = 0;
    for entry in std::fs::read_dir(expected_root().join("masks/refcoco")).unwrap() {
        let want = entry.unwrap().path();
        let got = out.0.join("masks/refcoco").join(want.file_name().unwrap());
        assert_eq!(decode_grey_png(&got), decode_grey_png(&want), "{}", want.display());
        masks += 1;
    }
    assert_eq!(report.masks_written, masks);
    assert_eq!(std::fs::read_dir(out.0.join("masks/refcoco")).unwrap().count(), masks, "no extra files");
    assert!(report.images_linked && image_path(&out.0, "COCO_train2014_000000000100.jpg").is_file());
}

#[test]
fn read_split_gives_refs_boxes_categories_and_sentences() {
    let refer = Refer::load(&fixtures::path("data/refer_mini"), "refcoco", None).unwrap();
    for split in split_names() {
        let records = read_split(&expected_root(), "refcoco", &split).unwrap();
        let from_refer: Vec<RefRecord> =
            refer.refs_in_split(&split).unwrap().into_iter().map(|r| record_of(&refer, r).unwrap()).collect();
        assert_eq!(records, from_refer, "{split}");
        for r in &records {
            assert!(mask_path(&expected_root(), "refcoco", r.segment_id).is_file());
            assert!((0..80).contains(&r.cat));
        }
    }
    // The val ref whose box reaches above and left of the image: int() truncates toward zero.
    let val = read_split(&expected_root(), "refcoco", "val").unwrap();
    assert!(val.iter().any(|r| r.bbox[0] < 0 && r.bbox[1] < 0));
}

#[test]
fn split_names_are_checked() {
    let err = read_split(&expected_root(), "refcoco", "test").unwrap_err().to_string();
    assert!(err.contains("testA, testB"), "{err}");
    let err = read_split(&expected_root(), "refcocog_u", "val").unwrap_err().to_string();
    assert!(err.contains("refcocog_u/val.json"), "{err}");
    assert!(read_split(&expected_root(), "..", "val").is_err());
}

#[test]
fn lmdb_is_refused_with_directions() {
    let dir = TempDir::new("lmdb");
    std::fs::create_dir_all(dir.0.join("refcoco")).unwrap();
    std::fs::write(dir.0.join("refcoco/train.lmdb"), b"").unwrap();
    for root in [dir.0.clone(), dir.0.join("refcoco"), dir.0.join("refcoco/train.lmdb")] {
        let err = read_split(&root, "refcoco", "train").unwrap_err().to_string();
        assert!(err.contains("LMDB") && err.contains("detris data prepare"), "{err}");
    }
    let err = Refer::load(&dir.0, "refcoco", None).err().unwrap().to_string();
    assert!(err.contains("LMDB"), "{err}");
}

#[test]
fn official_category_table_and_box_truncation() {
    let coco_ids: Vec<i64> = (1..=90).filter(|c| ![12, 26, 29, 30, 45, 66, 68, 69, 71, 83].contains(c)).collect();
    assert_eq!(coco_ids.len(), 80);
    let mapped: Vec<i64> = coco_ids.iter().map(|&c| coco_category_index(c)).collect();
    assert_eq!(mapped, (0..80).collect::<Vec<i64>>());
    assert_eq!([1, 18, 44, 90].map(coco_category_index), [0, 16, 39, 79]);
    assert_eq!(box_corners([-47.95, -72.26, 193.33, 309.64]).unwrap(), [-47, -72, 146, 237]);
    assert_eq!(box_corners([78.53, 131.64, 26.02, 45.49]).unwrap(), [78, 131, 104, 176]);
    assert!(box_corners([f64::NAN, 0.0, 1.0, 1.0]).is_err());
    assert_eq!(python_strip("\u{1f} a b \t"), "a b");
}

#[test]
fn python_json_format() {
    let mut out = Vec::new();
    let value = serde_json::json!([{"a": 1, "s": "Café 😀"}, 2]);
    value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonJson)).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), r#"[{"a": 1, "s": "Caf\u00e9 \ud83d\ude00"}, 2]"#);
}

#[test]
fn mixed_train_from_a_prepared_root() {
    let root = TempDir::new("mixed");
    let record = |id: i64, img: &str| RefRecord {
        bbox: [0, 0, 1, 1],
        cat: 0,
        segment_id: id,
        img_name: img.to_string(),
        sentences: vec![Sentence { idx: 0, sent_id: id, sent: format!("thing {id}") }],
    };
    let write = |ds: &str, split: &str, records: Vec<RefRecord>| {
        let path = ann_path(&root.0, ds, split);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, serde_json::to_vec(&records).unwrap()).unwrap();
    };
    write("refcoco", "train", vec![record(1, "a.jpg"), record(2, "b.jpg")]);
    write("refcoco", "val", vec![]);
    write("refcoco", "testA", vec![]);
    write("refcoco", "testB", vec![record(3, "e.jpg")]);
    write("refcoco+", "train", vec![record(1, "e.jpg"), record(4, "f.jpg")]);
    write("refcoco+", "val", vec![record(5, "b.jpg")]);
    write("refcoco+", "testA", vec![]);
    write("refcoco+", "testB", vec![]);
    write("refcocog_u", "train", vec![record(6, "c.jpg"), record(7, "b.jpg")]);
    write("refcocog_u", "val", vec![]);
    write("refcocog_u", "test", vec![record(8, "c.jpg")]);
    let (kept, removed) = read_mixed_train(&root.0).unwrap();
    assert_eq!(removed, 4, "b twice, e once, c once");
    let ids: Vec<(&str, i64)> = kept.iter().map(|r| (r.dataset, r.item.segment_id)).collect();
    assert_eq!(ids, [("refcoco", 1), ("refcoco+", 4)]);
}

#[test]
fn prepare_of_the_synthetic_refer_folder_matches_its_own_prepared_files() {
    // The synthetic set stores exact masks as RLE, which `prepare` decodes too.
    use crate::data::synth::{generate, ImageSize, SynthOptions, DATASET, SPLIT_BY};
    let src = TempDir::new("synth-src");
    let out = TempDir::new("synth-out");
    let opts = SynthOptions { image_size: ImageSize::Fixed { width: 64, height: 80 }, ..SynthOptions::new(3, 10) };
    generate(&src.0, &opts).unwrap();
    let report = prepare(&src.0, DATASET, Some(SPLIT_BY), &out.0).unwrap();
    assert!(report.masks_written > 0);
    for (split, refs, _) in &report.splits {
        let theirs = read_split(&src.0, DATASET, split).unwrap();
        assert_eq!(&read_split(&out.0, DATASET, split).unwrap(), &theirs, "{split}");
        assert_eq!(theirs.len(), *refs);
        for r in &theirs {
            let (a, b) = (mask_path(&src.0, DATASET, r.segment_id), mask_path(&out.0, DATASET, r.segment_id));
            assert_eq!(decode_grey_png(&a), decode_grey_png(&b), "ref {}", r.segment_id);
        }
    }
}
