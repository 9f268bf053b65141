//! The two sources under one loader: a manifest written from a prepared split loads the
//! same batches; resumed epochs, bad samples, the split by photo and the check report.

use super::*;
use crate::data::check::{check, shared_photos, CheckOptions};
use crate::data::holdout::split_by_photo;
use crate::data::loader::{BadSamples, Batch, Loader, LoaderOptions, Mode};
use crate::data::manifest::write_from_prepared;
use crate::data::synth::{generate, ImageSize, SynthOptions};
use std::collections::HashSet;

const S: usize = 28;
const L: usize = 12;

fn synth_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        train_images: 9,
        val_images: 3,
        test_images: 2,
        image_size: ImageSize::Varied { min: 64, max: 96 },
        ..SynthOptions::new(5, 14)
    };
    generate(dir.path(), &opts).unwrap();
    dir
}

fn options(batch_size: usize) -> LoaderOptions {
    LoaderOptions { input_size: S, word_len: L, batch_size, workers: 2, prefetch: 2, seed: 3 }
}

fn batches(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).collect::<Result<_>>().unwrap()
}

/// (ref, sentence, segment id, sentence text) of each sample.
type Placed = Vec<(usize, usize, String, String)>;

/// What a model sees of a batch, and which sample is where.
fn seen(batch: &Batch) -> (&[f32], &[i64], &[bool], Option<&Vec<f32>>, Placed) {
    let items =
        batch.items.iter().map(|i| (i.ref_index, i.sentence_index, i.segment_id.clone(), i.sentence.clone())).collect();
    (&batch.images, &batch.word_ids, &batch.pad_mask, batch.targets.as_ref(), items)
}

#[test]
fn a_manifest_of_a_prepared_split_loads_the_same_batches() {
    let root = synth_root();
    let out = root.path().join("train.jsonl");
    let written = write_from_prepared(root.path(), "synth", "train", &out).unwrap();
    let prepared = RefSource::prepared(root.path(), "synth", "train").unwrap();
    let manifest = RefSource::manifest(&out).unwrap();
    assert_eq!((written.lines, manifest.len(), manifest.bad_lines().len()), (prepared.len(), prepared.len(), 0));
    assert_eq!(manifest.sentence_counts(), prepared.sentence_counts());
    assert!(prepared.sentence_counts().iter().any(|&n| n > 1), "the test wants refs with several sentences");
    for mode in [Mode::Train, Mode::Val, Mode::Test] {
        let a = Loader::open(prepared.clone(), mode, options(4)).unwrap();
        let b = Loader::open(manifest.clone(), mode, options(4)).unwrap();
        for epoch in [0, 1] {
            assert_eq!(a.plan(epoch), b.plan(epoch));
            let (x, y) = (batches(&a, epoch), batches(&b, epoch));
            assert_eq!(x.len(), y.len());
            for (x, y) in x.iter().zip(&y) {
                assert_eq!(seen(x), seen(y), "{mode:?} epoch {epoch}");
                let evals = |b: &Batch| b.items.iter().map(|i| i.eval.clone()).collect::<Vec<_>>();
                assert_eq!(evals(x), evals(y));
            }
        }
        // Only the origin tells them apart.
        let item = &batches(&b, 0)[0].items[0];
        assert!(matches!(&item.origin, Origin::Manifest { line, .. } if *line == item.ref_index + 1));
    }
}

#[test]
fn a_resumed_epoch_does_not_load_the_batches_it_skips() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "train").unwrap();
    let loader = Loader::new(refs.clone(), Mode::Train, options(2)).unwrap();
    let plan = loader.plan(4);
    assert!(plan.len() >= 3);
    let whole = batches(&loader, 4);
    // The refs of the first two batches lose their photos (a training epoch uses a ref once).
    let mut broken = refs.clone();
    for &(r, _) in plan[..2].iter().flatten() {
        broken[r].image = root.path().join("gone.png");
    }
    let loader = Loader::new(broken, Mode::Train, options(2)).unwrap();
    assert_eq!(loader.plan(4), plan);
    let resumed: Vec<Batch> = loader.epoch_from(4, 2).collect::<Result<_>>().unwrap();
    assert_eq!(resumed, whole[2..]);
    assert!(loader.epoch(4).any(|b| b.is_err()), "the skipped batches were broken");
    assert_eq!(loader.run_plan_from(plan, 99).count(), 0);
}

#[test]
fn bad_samples_name_their_manifest_line_and_are_skipped_or_stop_the_epoch() {
    let root = synth_root();
    let out = root.path().join("val.jsonl");
    write_from_prepared(root.path(), "synth", "val", &out).unwrap();
    let source = RefSource::manifest(&out).unwrap();
    let broken = source.get(1).unwrap().into_owned();
    std::fs::write(&broken.image, b"not a photo").unwrap();
    let bad_refs: Vec<usize> = (0..source.len()).filter(|&r| source.get(r).unwrap().image == broken.image).collect();

    let stop = Loader::open(source.clone(), Mode::Val, options(1)).unwrap();
    let results: Vec<Result<Batch>> = stop.epoch(0).collect();
    let error = results.last().unwrap().as_ref().unwrap_err().to_string();
    assert_eq!(results.len(), bad_refs[0] + 1, "the epoch ends at the first bad sample");
    assert!(error.contains(&format!("val.jsonl line {}", bad_refs[0] + 1)), "{error}");
    assert!(error.contains(&broken.image.display().to_string()), "{error}");

    let skip = Loader::open(source.clone(), Mode::Val, options(2)).unwrap().with_bad_samples(BadSamples::Skip);
    let all = batches(&skip, 0);
    let skipped: Vec<_> = all.iter().flat_map(|b| b.skipped.iter()).collect();
    assert_eq!(skipped.iter().map(|s| s.ref_index).collect::<Vec<_>>(), bad_refs);
    assert!(skipped.iter().all(|s| matches!(s.origin, Origin::Manifest { line, .. } if line == s.ref_index + 1)));
    let loaded: usize = all.iter().map(|b| b.len).sum();
    assert_eq!(loaded + skipped.len(), source.len(), "every sample is loaded or reported");
    assert!(all.iter().all(|b| b.len == b.items.len()));
}

#[test]
fn the_split_by_photo_keeps_photos_on_one_side() {
    let root = synth_root();
    let out = root.path().join("all.jsonl");
    write_from_prepared(root.path(), "synth", "train", &out).unwrap();
    let source = RefSource::manifest(&out).unwrap();
    let photos: HashSet<u64> = (0..source.len()).map(|r| source.photo_key(r)).collect();
    let split = split_by_photo(&source, 0.3, 1).unwrap();
    let c = split.counts;
    assert_eq!(c.train_photos + c.val_photos, photos.len());
    assert_eq!(c.val_photos, (0.3 * photos.len() as f64).round() as usize);
    assert_eq!(
        (c.train_refs + c.val_refs, c.train_refs, c.val_refs),
        (source.len(), split.train.len(), split.val.len())
    );
    assert!(shared_photos(&split.train, &split.val).is_empty());
    let keys = |s: &RefSource| (0..s.len()).map(|r| s.photo_key(r)).collect::<HashSet<_>>();
    assert!(keys(&split.train).is_disjoint(&keys(&split.val)));
    // Deterministic, and the line order does not matter.
    let again = split_by_photo(&source, 0.3, 1).unwrap();
    assert_eq!(keys(&again.val), keys(&split.val));
    let text = std::fs::read_to_string(&out).unwrap();
    let reversed: Vec<&str> = text.lines().rev().collect();
    let out2 = root.path().join("reversed.jsonl");
    std::fs::write(&out2, reversed.join("\n")).unwrap();
    let other = split_by_photo(&RefSource::manifest(&out2).unwrap(), 0.3, 1).unwrap();
    assert_eq!(keys(&other.val), keys(&split.val));
    assert_ne!(keys(&split_by_photo(&source, 0.3, 2).unwrap().val), keys(&split.val), "the seed matters");
    assert!(split_by_photo(&source, 1.0, 1).is_err() && split_by_photo(&source, f64::NAN, 1).is_err());
    // Prepared sources split the same way (by image name).
    let prepared = RefSource::prepared(root.path(), "synth", "train").unwrap();
    assert_eq!(split_by_photo(&prepared, 0.3, 1).unwrap().counts, c);
}

#[test]
fn the_check_report_counts_and_names_what_is_wrong() {
    let root = synth_root();
    let out = root.path().join("train.jsonl");
    write_from_prepared(root.path(), "synth", "train", &out).unwrap();
    let good = RefSource::manifest(&out).unwrap();
    let first = good.get(0).unwrap().into_owned();
    // Append: a bad line, a polygon ref on the first photo, a ref on a missing photo.
    let mut text = std::fs::read_to_string(&out).unwrap();
    let photo = first.image.strip_prefix(root.path()).unwrap().display().to_string();
    text.push_str("{\"image\": \"x.png\", \"sentences\": [\"odd\"], \"mask_polygons\": [[1, 2, 3]]}\n");
    text.push_str(&format!(
        "{{\"id\": \"poly\", \"image\": \"{photo}\", \"sentences\": [\"the very long sentence that goes on and on and on\"], \"mask_polygons\": [[0, 0, 10, 0, 10, 10, 0, 10]]}}\n"
    ));
    text.push_str(
        "{\"id\": \"gone\", \"image\": \"missing.png\", \"sentences\": [\"zebra\"], \"mask\": \"missing.png\"}\n",
    );
    std::fs::write(&out, text).unwrap();
    let source = RefSource::manifest(&out).unwrap();
    let n = good.len();
    let vocabulary: HashSet<i64> = {
        let tokenizer = crate::tokenizer::ClipTokenizer::global();
        (0..good.len())
            .flat_map(|r| good.get(r).unwrap().into_owned().sentences)
            .flat_map(|s| tokenizer.encode(&s).unwrap())
            .map(i64::from)
            .collect()
    };
    let opts = CheckOptions { word_len: L, vocabulary: Some(vocabulary), ..CheckOptions::default() };
    let report = check(&source, &opts);
    assert_eq!((report.lines, report.refs), (Some(n + 3), n + 2));
    assert_eq!(report.sentences, good.sentence_counts().iter().sum::<usize>() + 2);
    assert_eq!(report.photos, (0..n).map(|r| good.photo_key(r)).collect::<HashSet<_>>().len() + 1);
    assert_eq!(report.bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), [n + 1]);
    let problems: Vec<String> = report.problems.examples.iter().map(|p| format!("{}: {}", p.origin, p.what)).collect();
    assert_eq!(report.problems.count, 1, "{problems:?}");
    assert!(problems[0].contains(&format!("line {}", n + 3)) && problems[0].contains("missing.png"), "{problems:?}");
    let sizes = report.photo_sizes.as_ref().unwrap();
    assert_eq!(sizes.read, report.photos - 1);
    assert!((64..=96).contains(&sizes.min_width) && (64..=96).contains(&sizes.max_height));
    let areas = report.mask_areas.as_ref().unwrap();
    assert_eq!((areas.measured, areas.empty, areas.resized), (n + 1, 0, 0));
    assert!(areas.min_fraction > 0.0 && areas.max_fraction <= 1.0);
    let tokenizer = crate::tokenizer::ClipTokenizer::global();
    let cut_before: usize = (0..n)
        .flat_map(|r| good.get(r).unwrap().into_owned().sentences)
        .filter(|s| tokenizer.tokenize(s, L).unwrap().truncated)
        .count();
    assert_eq!(report.truncated.count, cut_before + 1);
    assert!(report.truncated.examples.iter().any(|e| e.origin == source.origin(n) && e.tokens > L));
    let oov = report.out_of_vocabulary.as_ref().unwrap();
    assert_eq!(oov.sentences.count, 2, "{oov:?}");
    assert!(oov.tokens.iter().any(|(t, _)| t == "zebra"), "{oov:?}");
    assert!(report.duplicate_ids.examples.is_empty());
    serde_json::to_string(&report).unwrap();

    // A prepared split, with an id listed twice; the manifest shares its photos.
    let prepared = RefSource::prepared(root.path(), "synth", "train").unwrap();
    let RefSource::Refs(refs) = &prepared else { unreachable!() };
    let mut doubled = refs.to_vec();
    doubled.push(refs[0].clone());
    let report = check(&RefSource::from(doubled), &CheckOptions { mask_areas: false, ..CheckOptions::default() });
    assert_eq!((report.lines, report.refs, report.duplicate_ids.count), (None, n + 1, 1));
    assert_eq!(report.duplicate_ids.examples[0].id, refs[0].segment_id);
    assert_eq!(shared_photos(&prepared, &source).len(), report.photos);
}
