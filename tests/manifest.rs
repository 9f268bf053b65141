//! `detris segment --manifest` end to end with the shipped model on a small synthetic data
//! set: good and bad lines mixed, ground truths as PNG and as COCO RLE (compressed and as a
//! list), an interrupted run resumed, `--strict`, `--overwrite`, and IoUs equal to those of
//! `detris eval` on the same refs.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use detris::batch::{read_results, ResultLine};
use detris::mask_formats::rle_encode;
use detris_io::data::prepared::{self, RefRecord};
use serde_json::json;

use common::{detris_ok, detris_unchecked, fresh_temp_dir, synth_eval_args};

/// A synthetic data set (the shipped model's language) and its test split's refs.
fn synth(dir: &Path) -> (PathBuf, Vec<RefRecord>) {
    let data = dir.join("data");
    detris_ok(&["data", "synth", "--out", data.to_str().unwrap(), "--seed", "5", "--images", "20"]);
    let refs = prepared::read_split(&data, "synth", "test").unwrap();
    assert!(refs.len() >= 3, "the test split has a few refs ({})", refs.len());
    (data, refs)
}

/// One manifest line per ref: the ground truth as the mask PNG, a compressed RLE or a list
/// of runs, in turn.
fn good_line(data: &Path, r: &RefRecord, k: usize) -> serde_json::Value {
    let image = prepared::image_path(data, &r.img_name);
    let mask = prepared::mask_path(data, "synth", &r.segment_id);
    let sentences: Vec<&str> = r.sentences.iter().map(|s| s.sent.as_str()).collect();
    let mut line = json!({"id": r.segment_id.to_string(), "image": image, "sentences": sentences});
    let (grey, w, h) = detris_io::image::read_mask_png(&mask).unwrap();
    let fg: Vec<bool> = grey.iter().map(|&v| v != 0).collect();
    let rle = rle_encode(&fg, w, h).unwrap();
    match k % 3 {
        0 => line["mask"] = json!(mask),
        1 => line["mask_rle"] = json!({"size": [h, w], "counts": rle.to_compressed()}),
        _ => line["mask_rle"] = json!({"size": [h, w], "counts": rle.counts()}),
    }
    line
}

fn results_by_sentence(path: &Path) -> BTreeMap<(String, usize), ResultLine> {
    let mut out = BTreeMap::new();
    for r in read_results(path).unwrap() {
        let key = (r.id.clone(), r.sentence_index);
        assert!(out.insert(key.clone(), r).is_none(), "{key:?} appears twice in results.jsonl");
    }
    out
}

#[test]
fn good_and_bad_lines_ground_truths_and_the_same_ious_as_eval() {
    let dir = fresh_temp_dir("manifest-mixed");
    let (data, refs) = synth(&dir);
    let photo = prepared::image_path(&data, &refs[0].img_name);
    let bad = [
        ("{\"image\": ".to_string(), "bad JSON"),
        (
            json!({"id": "missing", "image": dir.join("nope.png"), "sentences": ["a red circle"]}).to_string(),
            "nope.png",
        ),
        (json!({"id": "empty", "image": photo, "sentences": ["  "]}).to_string(), "empty sentence"),
        (
            json!({"id": "wrong-size", "image": photo, "sentences": ["a red circle"],
                   "mask_rle": {"size": [3, 2], "counts": [6]}})
            .to_string(),
            "ground truth is 2×3",
        ),
    ];
    // Good and bad lines in turn; the bad ones' 1-based line numbers are kept.
    let (mut lines, mut bad_at) = (Vec::new(), Vec::new());
    let mut bad_lines = bad.iter();
    for (k, r) in refs.iter().enumerate() {
        lines.push(good_line(&data, r, k).to_string());
        if let Some((text, why)) = bad_lines.next() {
            lines.push(text.clone());
            bad_at.push((lines.len(), *why));
        }
    }
    for (text, why) in bad_lines {
        lines.push(text.clone());
        bad_at.push((lines.len(), *why));
    }
    let manifest = dir.join("items.jsonl");
    std::fs::write(&manifest, lines.join("\n") + "\n").unwrap();
    let out = dir.join("out");
    let stderr = detris_ok(&[
        "segment",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--probabilities",
        "--device",
        "cpu",
    ]);
    for (line, why) in &bad_at {
        let said = stderr.lines().find(|l| l.contains(&format!("line {line}:"))).unwrap_or_else(|| {
            panic!("no report of bad line {line} ({why}) in:\n{stderr}");
        });
        assert!(said.contains(why), "line {line} should say {why:?}: {said}");
    }

    let results = results_by_sentence(&out.join("results.jsonl"));
    let want: usize = refs.iter().map(|r| r.sentences.len()).sum();
    assert_eq!(results.len(), want, "one line per sentence of every good line");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["done"], refs.len());
    assert_eq!(summary["bad_lines"].as_array().unwrap().len(), bad.len());
    assert_eq!(summary["with_ground_truth"], want);
    for r in results.values() {
        // The mask file, its RLE, box and area say the same thing.
        let (grey, w, h) = detris_io::image::read_mask_png(out.join(&r.mask)).unwrap();
        assert_eq!((w, h), (r.width, r.height));
        let fg: Vec<bool> = grey.iter().map(|&v| v == 255).collect();
        assert_eq!(fg.iter().filter(|&&m| m).count(), r.area);
        assert_eq!(rle_encode(&fg, w, h).unwrap().to_compressed(), r.rle.counts);
        assert_eq!(r.rle.size, [h, w]);
        assert_eq!(r.bbox, detris::mask_formats::bounding_box(&fg, w));
        assert!(out.join(&r.overlay).exists() && out.join(r.probabilities.as_ref().unwrap()).exists());
        let (i, u) = (r.intersection.unwrap(), r.union.unwrap());
        // Read back through serde_json, whose float parsing may be one ulp off what was written.
        assert!((r.iou.unwrap() - detris_io::metrics::iou(i, u)).abs() < 1e-12);
    }
    assert!(results.values().any(|r| r.iou.unwrap() > 0.5), "the shipped model finds some objects");

    // `detris eval` on the same refs: the same IoU per sentence, and the same summary.
    let json = dir.join("eval.json");
    detris_ok(&synth_eval_args(&data, "test", &json, None, &["--batch-size", "1"]));
    let records = std::fs::read_to_string(dir.join("eval.sentences.jsonl")).unwrap();
    let mut n = 0;
    for line in records.lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        let key = (e["ref_id"].as_str().unwrap().to_string(), e["sentence_index"].as_u64().unwrap() as usize);
        let r = &results[&key];
        assert_eq!(r.sentence, e["sentence"].as_str().unwrap());
        // The same pixels: eval's loader and the segmenter share the preprocessing, the model
        // and the post-processing, so the counts are equal, not merely close.
        assert_eq!(
            (r.intersection.unwrap(), r.union.unwrap()),
            (e["intersection"].as_u64().unwrap(), e["union"].as_u64().unwrap()),
            "{key:?}"
        );
        assert_eq!(r.iou.unwrap(), e["iou"].as_f64().unwrap(), "{key:?}");
        n += 1;
    }
    assert_eq!(n, want);
    let eval: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let (ours, theirs) = (&summary["metrics"], &eval[0]["summary"]);
    // Sums in another order: equal to rounding.
    assert!((ours["miou"].as_f64().unwrap() - theirs["miou"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(ours["oiou"], theirs["oiou"]);
    assert_eq!(ours["prec"], theirs["prec"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_interrupted_run_resumes_without_losing_or_redoing_an_item() {
    let dir = fresh_temp_dir("manifest-resume");
    let (data, refs) = synth(&dir);
    let lines: Vec<String> = refs.iter().enumerate().map(|(k, r)| good_line(&data, r, k).to_string()).collect();
    let manifest = dir.join("items.jsonl");
    std::fs::write(&manifest, lines.join("\n")).unwrap();
    let out = dir.join("out");
    let args = ["segment", "--manifest", manifest.to_str().unwrap(), "--out", out.to_str().unwrap(), "--device", "cpu"];

    // A crash after two items: the process aborts (no destructor, no final summary).
    let crashed = detris_unchecked(&[&args[..], &["--abort-after", "2"]].concat());
    assert!(!crashed.status.success(), "the run was aborted");
    let results_path = out.join("results.jsonl");
    let first = std::fs::read_to_string(&results_path).unwrap();
    let first_ids: Vec<String> = read_results(&results_path).unwrap().into_iter().map(|r| r.id).collect();
    let per_item: Vec<usize> = refs.iter().map(|r| r.sentences.len()).collect();
    assert_eq!(first_ids.len(), per_item[0] + per_item[1], "exactly the two finished items are there");
    // And a torn write of a third item, as a crash in the middle of a line leaves it.
    let torn = &first.lines().next().unwrap()[..20];
    std::fs::write(&results_path, format!("{first}{torn}")).unwrap();

    let stdout = detris_ok(&args);
    assert!(stdout.contains(&format!("{} items segmented, 2 already done", refs.len() - 2)), "{stdout}");
    let after = std::fs::read_to_string(&results_path).unwrap();
    assert!(after.starts_with(&first), "the finished items' lines are kept as they were");
    let results = results_by_sentence(&results_path);
    assert_eq!(results.len(), per_item.iter().sum::<usize>(), "every sentence once");
    for r in &refs {
        for k in 0..r.sentences.len() {
            assert!(results.contains_key(&(r.segment_id.to_string(), k)), "ref {} sentence {k}", r.segment_id);
        }
    }

    // A third run has nothing to do; --overwrite redoes everything, once.
    assert!(detris_ok(&args).contains(&format!("0 items segmented, {} already done", refs.len())));
    detris_ok(&[&args[..], &["--overwrite"]].concat());
    assert_eq!(results_by_sentence(&results_path).len(), per_item.iter().sum::<usize>());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn strict_stops_at_the_first_bad_line_and_names_it() {
    let dir = fresh_temp_dir("manifest-strict");
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/models/example.png");
    let manifest = dir.join("items.jsonl");
    let good = json!({"image": photo, "sentences": ["the shape left of the big square"]});
    std::fs::write(&manifest, format!("{good}\n\n{{\"image\": \"{photo}\", \"sentences\": []}}\n{good}\n")).unwrap();
    let out = dir.join("out");
    let o = detris_unchecked(&[
        "segment",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--strict",
        "--device",
        "cpu",
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("line 3: sentences is empty"), "{stderr}");
    // Without --strict the same manifest gives two items (ids from their line numbers).
    detris_ok(&[
        "segment",
        "--manifest",
        manifest.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    let ids: Vec<String> = read_results(&out.join("results.jsonl")).unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, ["1", "4"]);
    assert!(out.join("1").join("01-the-shape-left-of-the-big-square.mask.png").exists());
    std::fs::remove_dir_all(&dir).ok();
}
