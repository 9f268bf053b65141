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
            assert!(mask_path(&expected_root(), "refcoco", &r.segment_id).is_file());
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
        segment_id: SegmentId::Ref(id),
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
    let ids: Vec<(&str, SegmentId)> = kept.iter().map(|r| (r.dataset, r.item.segment_id.clone())).collect();
    assert_eq!(ids, [("refcoco", SegmentId::Ref(1)), ("refcoco+", SegmentId::Ref(4))]);
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
            let (a, b) = (mask_path(&src.0, DATASET, &r.segment_id), mask_path(&out.0, DATASET, &r.segment_id));
            assert_eq!(decode_grey_png(&a), decode_grey_png(&b), "ref {}", r.segment_id);
        }
    }
}

/// `data/refer_mini` re-laid-out as another REFER download: its refs under
/// `<refer_dir>/refs(<split_by>).p` with their splits renamed by `split_of`,
/// and its pictures renamed by `image_name` under `images/<image_dir>/`.
fn mini_refer(
    out: &Path,
    refer_dir: &str,
    split_by: &str,
    split_of: impl Fn(&str) -> &'static str,
    image_dir: &str,
    image_name: impl Fn(&str) -> String,
) {
    use crate::pickle::writer::{to_pickle, PickleValue};
    use crate::pickle::Value;
    fn plain(v: &Value) -> PickleValue {
        match v {
            Value::Int(i) => PickleValue::Int(*i),
            Value::Float(f) => PickleValue::float(*f),
            Value::Str(s) => PickleValue::str(s),
            Value::Bytes(b) => PickleValue::str(String::from_utf8_lossy(b)),
            Value::List(items) => PickleValue::List(items.iter().map(plain).collect()),
            Value::Dict(pairs) => PickleValue::Dict(pairs.iter().map(|(k, v)| (plain(k), plain(v))).collect()),
            other => panic!("unexpected {other:?} in refs(unc).p"),
        }
    }
    let src = fixtures::path("data/refer_mini");
    let refs = crate::pickle::parse(&std::fs::read(src.join("refcoco/refs(unc).p")).unwrap()).unwrap();
    let refs: Vec<PickleValue> = refs
        .as_list()
        .unwrap()
        .iter()
        .map(|r| {
            let PickleValue::Dict(mut pairs) = plain(r) else { unreachable!() };
            for (k, v) in &mut pairs {
                if *k == PickleValue::str("split") {
                    let PickleValue::Str(old) = v else { panic!("split is not text") };
                    *v = PickleValue::str(split_of(old));
                }
            }
            PickleValue::Dict(pairs)
        })
        .collect();
    std::fs::create_dir_all(out.join(refer_dir)).unwrap();
    std::fs::write(out.join(refer_dir).join(format!("refs({split_by}).p")), to_pickle(&PickleValue::List(refs)))
        .unwrap();
    let mut instances: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("refcoco/instances.json")).unwrap()).unwrap();
    let images = out.join("images").join(image_dir);
    std::fs::create_dir_all(&images).unwrap();
    for img in instances["images"].as_array_mut().unwrap() {
        let old = img["file_name"].as_str().unwrap().to_string();
        let new = image_name(&old);
        std::fs::copy(src.join("images/train2014").join(&old), images.join(&new)).unwrap();
        img["file_name"] = new.into();
    }
    std::fs::write(out.join(refer_dir).join("instances.json"), serde_json::to_vec(&instances).unwrap()).unwrap();
}

fn same_split(s: &str) -> &'static str {
    match s {
        "train" => "train",
        "val" => "val",
        "testA" => "testA",
        "testB" => "testB",
        other => panic!("split {other}"),
    }
}

/// Segment ids of `data/refer_mini`'s refs whose split is in `splits`, in pickle order.
fn mini_ids(splits: &[&str]) -> Vec<i64> {
    let refer = Refer::load(&fixtures::path("data/refer_mini"), "refcoco", None).unwrap();
    refer.refs.iter().filter(|r| splits.contains(&r.split.as_str())).map(|r| r.ref_id).collect()
}

fn written_ids(root: &Path, dataset: &str, split: &str) -> Vec<i64> {
    read_split(root, dataset, split)
        .unwrap()
        .iter()
        .map(|r| match r.segment_id {
            SegmentId::Ref(id) => id,
            ref other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn refcoco_plus_unc_prepares_like_refcoco() {
    let (src, out) = (TempDir::new("plus-src"), TempDir::new("plus-out"));
    mini_refer(&src.0, "refcoco+", "unc", same_split, "train2014", str::to_string);
    let report = prepare(&src.0, "refcoco+", None, &out.0).unwrap();
    let names: Vec<&str> = report.splits.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["train", "val", "testA", "testB"]);
    for split in names {
        // The same refs as the RefCOCO fixture: the official files, byte for byte.
        let want = std::fs::read(ann_path(&expected_root(), "refcoco", split)).unwrap();
        assert_eq!(std::fs::read(ann_path(&out.0, "refcoco+", split)).unwrap(), want, "{split}");
    }
    assert!(mask_path(&out.0, "refcoco+", mini_ids(&["train"])[0]).is_file());
}

#[test]
fn refcocog_umd_and_google_prepare_their_own_splits() {
    let (src, out) = (TempDir::new("g-src"), TempDir::new("g-out"));
    // umd: testA and testB refs become test; google has train and val only.
    mini_refer(
        &src.0,
        "refcocog",
        "umd",
        |s| if s.starts_with("test") { "test" } else { same_split(s) },
        "train2014",
        str::to_string,
    );
    mini_refer(
        &src.0,
        "refcocog",
        "google",
        |s| if s.starts_with("test") { "val" } else { same_split(s) },
        "train2014",
        str::to_string,
    );
    assert!(prepare(&src.0, "refcocog", None, &out.0).is_err(), "refcocog needs umd or google");
    let umd = prepare(&src.0, "refcocog", Some("umd"), &out.0).unwrap();
    assert_eq!(umd.dataset, "refcocog_u");
    let google = prepare(&src.0, "refcocog", Some("google"), &out.0).unwrap();
    assert_eq!(google.dataset, "refcocog_g");
    for report in [&umd, &google] {
        let names: Vec<&str> = report.splits.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["train", "val", "test"], "{}", report.dataset);
    }
    assert_eq!(written_ids(&out.0, "refcocog_u", "test"), mini_ids(&["testA", "testB"]));
    assert_eq!(written_ids(&out.0, "refcocog_u", "val"), mini_ids(&["val"]));
    assert_eq!(written_ids(&out.0, "refcocog_g", "val"), mini_ids(&["val", "testA", "testB"]));
    assert_eq!(written_ids(&out.0, "refcocog_g", "train"), mini_ids(&["train"]));
    // The google split has no test refs, but the official script writes an empty test.json.
    assert_eq!(std::fs::read(ann_path(&out.0, "refcocog_g", "test")).unwrap(), b"[]");
    assert!(read_split(&out.0, "refcocog_g", "test").is_err(), "the length table has no refcocog_g test");
}

#[test]
fn refclef_uses_its_picture_folder_and_skips_the_excluded_pictures() {
    let (src, out) = (TempDir::new("clef-src"), TempDir::new("clef-out"));
    let refer = Refer::load(&fixtures::path("data/refer_mini"), "refcoco", None).unwrap();
    let first_image = refer.image(&refer.refs[0]).unwrap().file_name.clone();
    // ReferItGame pictures are `<number>.jpg`; the first one becomes an excluded picture.
    let rename = move |old: &str| {
        if old == first_image {
            "19579.jpg".to_string()
        } else {
            format!("{}.jpg", old.trim_end_matches(".jpg").rsplit('_').next().unwrap().trim_start_matches('0'))
        }
    };
    mini_refer(
        &src.0,
        "refclef",
        "unc",
        |s| if s == "testB" { "testC" } else { same_split(s) },
        "saiapr_tc-12",
        rename,
    );
    let report = prepare(&src.0, "refclef", None, &out.0).unwrap();
    let names: Vec<&str> = report.splits.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["train", "val", "testA", "testB", "testC"]);
    let excluded: Vec<i64> =
        refer.refs.iter().filter(|r| r.image_id == refer.refs[0].image_id).map(|r| r.ref_id).collect();
    assert!(!excluded.is_empty());
    let kept =
        |splits: &[&str]| -> Vec<i64> { mini_ids(splits).into_iter().filter(|id| !excluded.contains(id)).collect() };
    assert_eq!(written_ids(&out.0, "refclef", "train"), kept(&["train"]));
    assert_eq!(written_ids(&out.0, "refclef", "testC"), kept(&["testB"]));
    assert!(written_ids(&out.0, "refclef", "testB").is_empty());
    for id in &excluded {
        assert!(!mask_path(&out.0, "refclef", id).exists(), "ref {id} is on an excluded picture");
    }
    let total: usize = report.splits.iter().map(|s| s.1).sum();
    assert_eq!(report.masks_written, total);
    assert_eq!(total + excluded.len(), refer.refs.len());
    // The prepared set finds its pictures under images/saiapr_tc-12.
    use crate::data::source::MaskSource;
    let refs = crate::data::loader::prepared_refs(&out.0, "refclef", "train").unwrap();
    assert!(
        !refs.is_empty()
            && refs.iter().all(|r| r.image.is_file() && matches!(&r.mask, MaskSource::PreparedPng(m) if m.is_file()))
    );
    assert!(refs[0].image.to_string_lossy().contains("saiapr_tc-12"));
}

/// The three mixed sources prepared from `data/refer_mini` into one root.
fn mixed_sources(src: &Path, out: &Path) {
    mini_refer(src, "refcoco", "unc", same_split, "train2014", str::to_string);
    // refcoco+ with train and val swapped: refcoco's training pictures are in its val split.
    let swapped = |s: &str| match s {
        "train" => "val",
        "val" => "train",
        other => same_split(other),
    };
    mini_refer(src, "refcoco+", "unc", swapped, "train2014", str::to_string);
    mini_refer(
        src,
        "refcocog",
        "umd",
        |s| if s.starts_with("test") { "test" } else { same_split(s) },
        "train2014",
        str::to_string,
    );
    for (dataset, by) in [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")] {
        prepare(src, dataset, Some(by), out).unwrap();
    }
}

#[test]
fn the_mixed_set_concatenates_the_three_sets_with_prefixed_ids() {
    let (src, out) = (TempDir::new("mix-src"), TempDir::new("mix-out"));
    mixed_sources(&src.0, &out.0);
    let report = prepare_mixed(&out.0, false).unwrap();
    for split in ["train", "val"] {
        let mixed = read_split(&out.0, "refcoco_mixed", split).unwrap();
        let mut want = Vec::new();
        for ds in MIXED_SOURCES {
            for mut r in read_split(&out.0, ds, split).unwrap() {
                r.segment_id = SegmentId::Named(format!("{ds}_{}", r.segment_id));
                want.push(r);
            }
        }
        assert_eq!(mixed, want, "{split}");
        for r in &mixed {
            let (name, id) =
                r.segment_id.to_string().rsplit_once('_').map(|(a, b)| (a.to_string(), b.to_string())).unwrap();
            let source = mask_path(&out.0, &name, id);
            assert_eq!(
                std::fs::read(mask_path(&out.0, "refcoco_mixed", &r.segment_id)).unwrap(),
                std::fs::read(source).unwrap()
            );
        }
    }
    assert_eq!(report.splits.iter().map(|s| s.1).sum::<usize>(), report.masks_written);
    assert_eq!(report.excluded_train_refs, 0);
    // The leak filter: the refcoco training pictures are refcoco+ val pictures.
    let filtered = prepare_mixed(&out.0, true).unwrap();
    let (_, removed) = read_mixed_train(&out.0).unwrap();
    assert!(removed > 0);
    assert_eq!(filtered.excluded_train_refs, removed);
    assert_eq!(filtered.splits[0].1 + removed, report.splits[0].1);
    assert_eq!(filtered.splits[1], report.splits[1], "val is never filtered");
    // The loader reads the mixed set: string ids name the copied masks.
    use crate::data::source::MaskSource;
    let refs = crate::data::loader::prepared_refs(&out.0, "refcoco_mixed", "val").unwrap();
    assert!(refs.iter().all(|r| matches!(&r.mask, MaskSource::PreparedPng(m) if m.is_file()) && r.image.is_file()));
}
