//! The loader over a small synthetic data set, and over hand-made files for
//! the mask-size mismatch.

use super::*;
use crate::data::synth::{generate, ImageSize, SynthOptions};
use crate::tokenizer::ClipTokenizer;
use std::collections::BTreeSet;
use std::path::Path;

const S: usize = 28;
const L: usize = 12;

/// 10 train, 3 val, 3 test pictures of varied non-square sizes.
fn synth_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let opts = SynthOptions {
        train_images: 10,
        val_images: 3,
        test_images: 3,
        image_size: ImageSize::Varied { min: 64, max: 96 },
        ..SynthOptions::new(4, 16)
    };
    generate(dir.path(), &opts).unwrap();
    dir
}

fn options(batch_size: usize, workers: usize) -> LoaderOptions {
    LoaderOptions { input_size: S, word_len: L, batch_size, workers, prefetch: 2, seed: 9 }
}

fn all_batches(loader: &Loader, epoch: u64) -> Vec<Batch> {
    loader.epoch(epoch).collect::<Result<_>>().unwrap()
}

#[test]
fn batches_do_not_depend_on_the_worker_count() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "train").unwrap();
    let one = Loader::new(refs.clone(), Mode::Train, options(4, 1)).unwrap();
    let three = Loader::new(refs.clone(), Mode::Train, options(4, 3)).unwrap();
    let again = Loader::new(refs, Mode::Train, options(4, 2)).unwrap();
    for epoch in [0, 1] {
        let batches = all_batches(&one, epoch);
        assert_eq!(batches.len(), one.len() / 4);
        assert_eq!(batches, all_batches(&three, epoch));
        assert_eq!(batches, all_batches(&again, epoch));
    }
    assert_ne!(one.plan(0), one.plan(1), "each epoch reshuffles");
    let other_seed =
        Loader::open(one.source().clone(), Mode::Train, LoaderOptions { seed: 10, ..options(4, 1) }).unwrap();
    assert_ne!(one.plan(0), other_seed.plan(0));
}

#[test]
fn batches_hold_what_the_plan_says() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "train").unwrap();
    let loader = Loader::new(refs, Mode::Train, options(3, 2)).unwrap();
    let plan = loader.plan(0);
    for (batch, planned) in all_batches(&loader, 0).iter().zip(&plan) {
        assert_eq!(batch.len, 3);
        assert_eq!((batch.images.len(), batch.word_ids.len(), batch.pad_mask.len()), (3 * 3 * S * S, 3 * L, 3 * L));
        let targets = batch.targets.as_ref().unwrap();
        assert_eq!(targets.len(), 3 * S * S);
        assert!(targets.iter().all(|&t| (0.0..=1.0).contains(&t)));
        for (k, (item, &(r, s))) in batch.items.iter().zip(planned).enumerate() {
            assert_eq!((item.ref_index, item.sentence_index), (r, s));
            assert_eq!(item.sentence, loader.source().get(r).unwrap().sentences[s]);
            assert!(item.eval.is_none());
            let tokens = ClipTokenizer::global().tokenize(&item.sentence, L).unwrap();
            assert_eq!(batch.word_ids[k * L..(k + 1) * L], tokens.ids[..]);
            let pads = batch.pad_mask[k * L..(k + 1) * L].iter().filter(|&&p| p).count();
            assert_eq!(pads, L - tokens.n_ids.min(L));
            // Every synthetic object is visible, so every target has foreground.
            assert!(targets[k * S * S..(k + 1) * S * S].iter().any(|&t| t > 0.5));
        }
    }
}

#[test]
fn training_takes_one_random_sentence_per_ref_and_drops_the_last_batch() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "train").unwrap();
    let n = refs.len();
    assert_ne!(n % 4, 0, "the test wants a partial last batch ({n} refs)");
    let loader = Loader::new(refs, Mode::Train, options(4, 1)).unwrap();
    let mut picks = BTreeSet::new();
    for epoch in 0..6 {
        let plan = loader.plan(epoch);
        assert!(plan.iter().all(|b| b.len() == 4));
        let used: Vec<usize> = plan.iter().flatten().map(|&(r, _)| r).collect();
        assert_eq!(used.len(), n / 4 * 4);
        assert_eq!(used.iter().collect::<BTreeSet<_>>().len(), used.len(), "a ref twice in one epoch");
        picks.extend(plan.iter().flatten().copied());
    }
    // Over six epochs, refs with several sentences show more than one of them.
    let refs_with_two_picks = (0..n).filter(|&r| picks.iter().filter(|p| p.0 == r).count() > 1).count();
    assert!(refs_with_two_picks > n / 2, "{refs_with_two_picks} of {n}");
}

#[test]
fn validation_uses_first_sentences_and_test_every_sentence() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "test").unwrap();
    let sentences: usize = refs.iter().map(|r| r.sentences.len()).sum();
    assert!(sentences > refs.len());

    let val = Loader::new(refs.clone(), Mode::Val, options(4, 2)).unwrap();
    let items: Vec<(usize, usize)> = val.plan(3).concat();
    assert_eq!(items, (0..refs.len()).map(|r| (r, 0)).collect::<Vec<_>>());
    assert_eq!(val.plan(0), val.plan(7), "no shuffling outside training");

    let test = Loader::new(refs.clone(), Mode::Test, options(1, 2)).unwrap();
    let batches = all_batches(&test, 0);
    assert_eq!(batches.len(), sentences);
    let mut expected = Vec::new();
    for (r, x) in refs.iter().enumerate() {
        expected.extend((0..x.sentences.len()).map(|s| (r, s)));
    }
    let got: Vec<(usize, usize)> = batches.iter().map(|b| (b.items[0].ref_index, b.items[0].sentence_index)).collect();
    assert_eq!(got, expected);
    for batch in &batches {
        let item = &batch.items[0];
        assert!(batch.targets.is_none());
        let eval = item.eval.as_ref().unwrap();
        assert_eq!(eval.mask.len(), item.width * item.height);
        assert!(!eval.mask_resized && eval.mask.contains(&1));
        assert_eq!((item.letterbox.src_w, item.letterbox.src_h, item.letterbox.size), (item.width, item.height, S));
    }
    assert!(test.resized_masks().is_empty());
}

/// Writes a prepared layout with one ref: a `w × h` photo, a `mw × mh` mask.
fn write_single_ref(root: &Path, (w, h): (u32, u32), mask: &image::GrayImage) {
    std::fs::create_dir_all(root.join("anns/tiny")).unwrap();
    std::fs::create_dir_all(root.join("images/train2014")).unwrap();
    std::fs::create_dir_all(root.join("masks/tiny")).unwrap();
    image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30])).save(root.join("images/train2014/a.png")).unwrap();
    mask.save(root.join("masks/tiny/7.png")).unwrap();
    let anns = r#"[{"bbox": [0, 0, 1, 1], "cat": 0, "segment_id": 7, "img_name": "a.png",
        "sentences": [{"idx": 0, "sent_id": 0, "sent": "the thing"}], "sentences_num": 1}]"#;
    std::fs::write(root.join("anns/tiny/val.json"), anns).unwrap();
}

#[test]
fn a_mask_of_another_size_is_resized_to_the_photo_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    // 4×3 mask, left column and top row set; the photo is 8×6.
    let mask = image::GrayImage::from_fn(4, 3, |x, y| image::Luma([if x == 0 || y == 0 { 255 } else { 0 }]));
    write_single_ref(dir.path(), (8, 6), &mask);
    let refs = prepared_refs(dir.path(), "tiny", "val").unwrap();
    for mode in [Mode::Val, Mode::Train] {
        let loader = Loader::new(refs.clone(), mode, options(1, 1)).unwrap();
        let batches = all_batches(&loader, 0);
        assert_eq!(batches.len(), 1);
        assert_eq!(loader.resized_masks(), vec!["7".to_string()]);
        if mode == Mode::Val {
            let eval = batches[0].items[0].eval.as_ref().unwrap();
            assert!(eval.mask_resized);
            let expected: Vec<u8> = (0..6).flat_map(|y| (0..8).map(move |x| u8::from(x < 2 || y < 2))).collect();
            assert_eq!(eval.mask, expected);
        }
    }
}

#[test]
fn nearest_resize_matches_cv2_on_a_downscale() {
    // cv2.resize(np.arange(6).reshape(2,3), (2,1), interpolation=INTER_NEAREST) == [[0, 1]]
    assert_eq!(resize_nearest(&[0, 1, 2, 3, 4, 5], 3, 2, 2, 1), vec![0, 1]);
    assert_eq!(resize_nearest(&[1, 2], 2, 1, 4, 2), vec![1, 1, 2, 2, 1, 1, 2, 2]);
}

#[test]
fn a_missing_photo_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    write_single_ref(dir.path(), (8, 6), &image::GrayImage::new(8, 6));
    std::fs::remove_file(dir.path().join("images/train2014/a.png")).unwrap();
    let loader = Loader::new(prepared_refs(dir.path(), "tiny", "val").unwrap(), Mode::Val, options(1, 1)).unwrap();
    let mut batches = loader.epoch(0);
    let error = batches.next().unwrap().unwrap_err().to_string();
    assert!(error.contains("a.png"), "{error}");
    assert!(batches.next().is_none());
}

#[test]
fn bad_prepared_files_and_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("anns/x")).unwrap();
    std::fs::write(dir.path().join("anns/x/train.json"), r#"[{"img_name": "a.png"}]"#).unwrap();
    let error = prepared_refs(dir.path(), "x", "train").unwrap_err().to_string();
    assert!(error.contains("train.json"), "{error}");
    std::fs::write(
        dir.path().join("anns/x/train.json"),
        r#"[{"bbox": [0, 0, 1, 1], "cat": 0, "segment_id": 1, "img_name": "../a.png", "sentences": []}]"#,
    )
    .unwrap();
    assert!(prepared_refs(dir.path(), "x", "train").is_err());
    let no_sentences = LoaderRef {
        image: "a".into(),
        mask: MaskSource::PreparedPng("b".into()),
        segment_id: "1".into(),
        sentences: vec![],
        origin: Origin::Memory { index: 0 },
    };
    assert!(Loader::new(vec![no_sentences], Mode::Train, options(1, 1)).is_err());
    assert!(Loader::new(vec![], Mode::Train, options(0, 1)).is_err());
}

#[test]
fn stopping_early_ends_the_background_work() {
    let root = synth_root();
    let refs = prepared_refs(root.path(), "synth", "train").unwrap();
    let loader = Loader::new(refs, Mode::Test, options(1, 2)).unwrap();
    let mut batches = loader.epoch(0);
    assert!(batches.next().unwrap().is_ok());
    drop(batches); // joins the producer; a hang here would fail the test run
}
