//! The manifests of `data synth --manifest-out`: deterministic, read back by the manifest
//! reader and the training loader, masks and sentences true to the drawn scenes.

use super::*;
use crate::data::loader::{Loader, LoaderOptions, Mode};
use crate::data::manifest::{self, GroundTruth};
use crate::data::source::RefSource;
use crate::data::synth::expr::Expression;
use crate::data::synth::scene::Scene;
use crate::data::synth::tests::read_tree;
use crate::data::synth::ImageSize;
use crate::image::{load_rgb, photo_size};
use serde_json::Value;

fn small_options(seed: u64) -> SynthOptions {
    SynthOptions {
        train_images: 5,
        val_images: 2,
        test_images: 3,
        image_size: ImageSize::Varied { min: 80, max: 120 },
        ..SynthOptions::new(seed, 10)
    }
}

#[test]
fn same_seed_gives_byte_identical_manifests_and_photos() {
    let (a, b, c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let report_a = generate_manifest(a.path(), &small_options(4), Style::Photo).unwrap();
    let report_b = generate_manifest(b.path(), &small_options(4), Style::Photo).unwrap();
    generate_manifest(c.path(), &small_options(5), Style::Photo).unwrap();
    let (files_a, files_b) = (read_tree(a.path()), read_tree(b.path()));
    // 10 photos, at least one mask each, 3 manifests and the scenes.
    assert!(files_a.len() >= 10 + 10 + 4, "{} files", files_a.len());
    assert_eq!(files_a, files_b);
    assert_eq!((&report_a.splits, &report_a.kinds), (&report_b.splits, &report_b.kinds));
    let files_c = read_tree(c.path());
    assert_ne!(files_a[Path::new("train.jsonl")], files_c[Path::new("train.jsonl")]);
    // The test split has its own seed: its photos (after the 7 train and val ones) stay put.
    let photo =
        |files: &BTreeMap<PathBuf, Vec<u8>>, id: usize| files[&PathBuf::from(format!("images/{id:06}.jpg"))].clone();
    assert!((8..=10).all(|id| photo(&files_a, id) == photo(&files_c, id)));
    assert!((1..=7).all(|id| photo(&files_a, id) != photo(&files_c, id)));
}

#[test]
fn the_manifests_read_back_through_the_manifest_reader_and_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate_manifest(dir.path(), &small_options(2), Style::Photo).unwrap();
    assert_eq!(report.manifests.len(), 3);
    let mut non_square = 0;
    for (path, split) in report.manifests.iter().zip(&report.splits) {
        let read = manifest::read(path).unwrap();
        assert!(read.bad.is_empty(), "{:?}", read.bad);
        assert_eq!(read.items.len(), split.refs);
        assert_eq!(read.items.iter().map(|i| i.sentences.len()).sum::<usize>(), split.sentences);
        for item in &read.items {
            let (w, h) = photo_size(&item.image).unwrap();
            assert_eq!(load_rgb(&item.image).unwrap().dimensions(), (w, h), "a decodable photo");
            non_square += usize::from(w != h);
            let Some(truth @ GroundTruth::Png(_)) = &item.ground_truth else { panic!("a mask PNG") };
            let mask = truth.read(w as usize, h as usize).unwrap();
            assert_eq!((mask.width, mask.height), (w as usize, h as usize));
            assert!(mask.grey.iter().all(|&v| v == 0 || v == 255));
            assert!(mask.grey.contains(&255), "line {}: an empty mask", item.line);
        }
        let source = RefSource::manifest(path).unwrap();
        assert_eq!(source.len(), split.refs);
        let options = LoaderOptions { input_size: 32, word_len: 12, batch_size: 2, workers: 1, prefetch: 1, seed: 0 };
        let loader = Loader::open(source, Mode::Train, options).unwrap();
        let first = loader.epoch(0).next().expect("a batch").unwrap();
        assert_eq!(first.items.len(), 2.min(split.refs));
    }
    assert!(non_square > 0, "photo sizes are not all square");
}

/// Re-draws every scene from scenes.json: each mask is exactly one object's visible pixels,
/// each sentence names that object, and the photo is not the plain look.
#[test]
fn masks_and_sentences_match_the_drawn_objects() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_options(9);
    generate_manifest(dir.path(), &opts, Style::Photo).unwrap();
    let scenes: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.path().join("scenes.json")).unwrap()).unwrap();
    let scene_of = |image: &str| -> Scene {
        let entry = scenes.iter().find(|s| s["image"] == image).unwrap_or_else(|| panic!("{image} in scenes.json"));
        serde_json::from_value(entry["scene"].clone()).unwrap()
    };
    let mut lines = 0;
    for split in ["train", "val", "test"] {
        for item in manifest::read(dir.path().join(format!("{split}.jsonl"))).unwrap().items {
            let image = item.image.strip_prefix(dir.path()).unwrap().to_str().unwrap().to_string();
            let scene = scene_of(&image);
            let rendered = scene.render();
            let truth = item.ground_truth.unwrap().read(scene.width, scene.height).unwrap();
            let mask: Vec<u8> = truth.grey.iter().map(|&v| u8::from(v == 255)).collect();
            let matches: Vec<usize> = (0..scene.objects.len()).filter(|&i| rendered.mask(i) == mask).collect();
            assert_eq!(matches.len(), 1, "{image} line {}: the mask is one object's", item.line);
            for text in &item.sentences {
                let expression = Expression::parse(text).unwrap_or_else(|| panic!("{text:?} is outside the grammar"));
                assert_eq!(expression.resolve(&scene), Some(matches[0]), "{text:?} does not name its object");
            }
            // The restyle changed the pixels: far from the flat plain render on average.
            let photo = load_rgb(&item.image).unwrap().into_raw();
            let diff: f64 = photo.iter().zip(&rendered.rgb).map(|(&a, &b)| (a as f64 - b as f64).abs()).sum();
            assert!(diff / photo.len() as f64 > 4.0, "{image} looks like the plain render");
            lines += 1;
        }
    }
    assert!(lines >= 10, "{lines} lines");
}

#[test]
fn the_prepared_layout_takes_the_style_too_and_plain_is_unchanged() {
    let (styled, plain, default) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let opts = small_options(3);
    super::super::generate_styled(styled.path(), &opts, Style::Photo).unwrap();
    super::super::generate_styled(plain.path(), &opts, Style::Plain).unwrap();
    super::super::generate(default.path(), &opts).unwrap();
    assert_eq!(read_tree(plain.path()), read_tree(default.path()));
    let records = crate::data::prepared::read_split(styled.path(), "synth", "train").unwrap();
    assert!(!records.is_empty());
    for r in &records {
        assert!(r.img_name.ends_with(".jpg"), "{}", r.img_name);
        load_rgb(styled.path().join("images/train2014").join(&r.img_name)).unwrap();
    }
}
