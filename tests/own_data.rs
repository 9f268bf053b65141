//! Training and evaluating on one's own data: a manifest trains as the prepared split it lists
//! (the same batches, the same parameters, bit for bit), over 2 ranks too; `eval --manifest`
//! reports as for a split; `train --manifest` splits by photo when no val manifest is given;
//! `data check` reports a manifest's problems; `eval --yaml` takes the official test keys.

mod common;

use std::path::{Path, PathBuf};

use common::{
    detris_checked, detris_ok, detris_unchecked, fresh_temp_dir, max_abs_diff, set_flag, sorted_safetensors,
    synth_data, synth_train_args,
};
use detris_io::data::manifest::write_from_prepared;

/// The synthetic set, and its train and val splits written as manifests beside it.
fn setup(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let data = synth_data(dir, 20);
    let train = dir.join("train.jsonl");
    let val = dir.join("val.jsonl");
    write_from_prepared(&data, "synth", "train", &train).unwrap();
    write_from_prepared(&data, "synth", "val", &val).unwrap();
    (data, train, val)
}

/// [`synth_train_args`] (from the shipped model, dropout 0, one epoch) with `extra`; on the
/// manifests when `manifests` is given, else on the prepared splits.
fn train_args<'a>(
    data: &'a Path,
    out: &'a Path,
    manifests: Option<(&'a Path, &'a Path)>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = set_flag(synth_train_args(data, out, &["--epochs", "1", "--dropout", "0"]), "--val-limit", "4");
    // `extra`: flag-value pairs, replacing the flag's value where it is already given.
    for pair in extra.chunks(2) {
        if args.contains(&pair[0]) {
            args = set_flag(args, pair[0], pair[1]);
        } else {
            args.extend_from_slice(pair);
        }
    }
    if let Some((train, val)) = manifests {
        let i = args.iter().position(|a| *a == "--data").unwrap();
        args.drain(i..i + 4); // --data D --dataset synth
        args.extend(["--manifest", train.to_str().unwrap(), "--val-manifest", val.to_str().unwrap()]);
    }
    args
}

/// Every tensor of two checkpoints equal, bit for bit; returns how many.
fn assert_bit_identical(a: &Path, b: &Path, what: &str) -> usize {
    let (a, b) = (sorted_safetensors(a), sorted_safetensors(b));
    assert_eq!(a.len(), b.len(), "{what}: tensor count");
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb, "{what}");
        assert_eq!(max_abs_diff(ta, tb), 0.0, "{what}: {na} differs");
    }
    a.len()
}

/// The largest |Δ| over the tensors of two checkpoints (same names).
fn max_diff(a: &Path, b: &Path) -> f64 {
    let (a, b) = (sorted_safetensors(a), sorted_safetensors(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|((_, ta), (_, tb))| max_abs_diff(ta, tb)).fold(0.0, f64::max)
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_manifest_of_a_prepared_split_trains_identically_to_it_in_one_process_and_over_two_ranks() {
    let dir = fresh_temp_dir("own-data-parity");
    let (data, train, val) = setup(&dir);
    let runs = ["prepared", "manifest", "prepared2", "manifest2"].map(|n| dir.join(n));
    let m = Some((train.as_path(), val.as_path()));
    // One process: 3 steps of 8, then validation.
    let steps = ["--max-steps", "3"];
    let log = detris_ok(&train_args(&data, &runs[0], None, &steps));
    let refs = std::fs::read_to_string(&train).unwrap().lines().count();
    assert!(log.contains(&format!("train: {refs} refs")), "the counts are printed:\n{log}");
    let log = detris_ok(&train_args(&data, &runs[1], m, &steps));
    assert!(log.contains(&format!("train: {refs} refs")) && log.contains(&train.display().to_string()), "{log}");
    let n = assert_bit_identical(&runs[0].join("last.safetensors"), &runs[1].join("last.safetensors"), "1 process");
    assert!(n > 10, "weights and Adam moments are compared");
    // Two ranks, one whole epoch (validation at its end): the distributed sampler draws the
    // same shares from either source.
    let two = ["--nproc-per-node", "2", "--workers", "1", "--batch-size", "12"];
    detris_checked(&train_args(&data, &runs[2], None, &two));
    detris_checked(&train_args(&data, &runs[3], m, &two));
    assert_bit_identical(&runs[2].join("last.safetensors"), &runs[3].join("last.safetensors"), "2 ranks");
    let (mp, mm) = (metrics(&runs[2]), metrics(&runs[3]));
    assert_eq!(mp[0]["val_miou"], mm[0]["val_miou"], "the same validation");
    assert_eq!(mp[0]["train_loss"], mm[0]["train_loss"], "the same batches");
    // 2 ranks on the manifest = 1 process on it, within f32 rounding: as tests/distributed_cli.rs
    // bounds it for the prepared layout, by the noise floor of 1 process at 1 vs 2 threads
    // (the same reordering of f32 sums, which Adam turns into steps of up to lr), factor 2.
    let (one, threads2) = (dir.join("manifest1"), dir.join("manifest1-threads2"));
    // One rank: the sampler of a data-parallel run (the order differs from a plain run's).
    let one_rank = [&["--nproc-per-node", "1"][..], &two[2..]].concat();
    detris_checked(&train_args(&data, &one, m, &one_rank));
    detris_checked(&train_args(&data, &threads2, m, &[&one_rank[..], &["--threads", "2"][..]].concat()));
    let last = |run: &Path| run.join("last.safetensors");
    let d = max_diff(&last(&one), &last(&runs[3]));
    let floor = max_diff(&last(&one), &last(&threads2));
    assert!(floor > 0.0, "the thread count changes the rounding");
    assert!(d <= 2.0 * floor, "2 ranks vs 1 process on a manifest: max |Δ| {d}, 1 vs 2 threads: {floor}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_manifest_without_a_val_manifest_is_split_by_photo_and_resumes() {
    let dir = fresh_temp_dir("own-data-holdout");
    let (data, train, _) = setup(&dir);
    let out = dir.join("run");
    let mut args = train_args(&data, &out, None, &["--max-steps", "1", "--batch-size", "4"]);
    let i = args.iter().position(|a| *a == "--data").unwrap();
    args.drain(i..i + 4);
    args.extend(["--manifest", train.to_str().unwrap(), "--val-fraction", "0.25"]);
    let log = detris_ok(&args);
    let text = std::fs::read_to_string(&train).unwrap();
    let photos: std::collections::BTreeSet<String> =
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["image"].to_string()).collect();
    let val_photos = (0.25 * photos.len() as f64).round() as usize;
    assert!(log.contains(&format!("{} photos from", photos.len() - val_photos)), "{log}");
    assert!(log.contains(&format!("{val_photos} photos from")), "{log}");
    // The options stored in the checkpoint name the split and resume.
    let mut more = args.clone();
    let i = more.iter().position(|a| *a == "--max-steps").unwrap();
    more[i + 1] = "2";
    more.push("--resume");
    let log = detris_ok(&more);
    assert!(log.contains("resuming at epoch 1, step 1"), "{log}");
    // A different fraction is a different run.
    let i = more.iter().position(|a| *a == "0.25").unwrap();
    more[i] = "0.5";
    let o = detris_unchecked(&more);
    assert!(!o.status.success(), "resumed with another split");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_on_a_manifest_reports_as_on_the_split_it_lists() {
    let dir = fresh_temp_dir("own-data-eval");
    let data = synth_data(&dir, 20);
    let test = dir.join("test.jsonl");
    write_from_prepared(&data, "synth", "test", &test).unwrap();
    let (a, b) = (dir.join("split.json"), dir.join("manifest.json"));
    let common = ["eval", "--threads", "1", "--device", "cpu", "--limit", "3"];
    let split = [&common[..], &["--data", data.to_str().unwrap(), "--dataset", "synth", "--split", "test"]].concat();
    detris_checked(&[&split[..], &["--json", a.to_str().unwrap()]].concat());
    let out =
        detris_ok(&[&common[..], &["--manifest", test.to_str().unwrap(), "--json", b.to_str().unwrap()]].concat());
    assert!(out.contains("manifest") && out.contains("mIoU"), "the table:\n{out}");
    let read = |p: &Path| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let (ja, jb) = (read(&a), read(&b));
    assert_eq!(ja[0]["summary"], jb[0]["summary"], "the same figures");
    assert_eq!(jb[0]["split"], "test");
    let records = |p: &Path| std::fs::read_to_string(p.with_extension("sentences.jsonl")).unwrap();
    let (ra, rb) = (records(&a), records(&b));
    assert!(!rb.is_empty());
    assert_eq!(ra, rb, "the same per-sentence records (ref ids are the segment ids)");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn data_check_reports_bad_lines_cut_sentences_unknown_words_and_shared_photos() {
    let dir = fresh_temp_dir("own-data-check");
    let (data, train, val) = setup(&dir);
    let mut text = std::fs::read_to_string(&train).unwrap();
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let image = first["image"].as_str().unwrap();
    let long = "the zebra beside the giraffe ".repeat(6);
    text += &format!("{{\"id\": \"long\", \"image\": \"{image}\", \"sentences\": [\"{long}\"], \"mask_polygons\": [[1, 1, 20, 1, 10, 20]]}}\n");
    text += "{\"image\": \"x.jpg\"}\n";
    let bad_line = text.lines().count();
    std::fs::write(&train, &text).unwrap();
    // The val side shares a photo with the train side.
    let mut val_text = std::fs::read_to_string(&val).unwrap();
    val_text += &format!("{{\"id\": \"shared\", \"image\": \"{image}\", \"sentences\": [\"the thing\"], \"mask_polygons\": [[1, 1, 20, 1, 10, 20]]}}\n");
    std::fs::write(&val, val_text).unwrap();
    let args =
        ["data", "check", train.to_str().unwrap(), "--val", val.to_str().unwrap(), "--threads", "1", "--device", "cpu"];
    let json: serde_json::Value = serde_json::from_str(
        &detris_ok(&[&args[..], &["--json"]].concat())
            .lines()
            .skip_while(|l| !l.starts_with('{'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let t = &json["train"];
    assert_eq!(t["refs"], bad_line - 1, "every good line is a ref");
    assert_eq!(t["bad_lines"][0]["line"], bad_line);
    assert_eq!(t["truncated"]["count"], 1);
    assert!(
        t["out_of_vocabulary"]["sentences"]["count"].as_u64().unwrap() >= 1,
        "zebra is not in the shipped vocabulary: {t}"
    );
    assert_eq!(json["shared_photos"]["count"], 1);
    let table = detris_ok(&args);
    assert!(table.contains(&format!("bad line {bad_line}")) && table.contains("photos on both sides: 1"), "{table}");
    // A prepared split is checked the same way.
    let table = detris_ok(&[
        "data",
        "check",
        "--data",
        data.to_str().unwrap(),
        "--dataset",
        "synth",
        "--split",
        "val",
        "--quick",
        "--device",
        "cpu",
    ]);
    assert!(table.contains("refs") && table.contains("val.json"), "{table}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_takes_the_official_test_keys_from_a_yaml() {
    let dir = fresh_temp_dir("own-data-yaml");
    let data = synth_data(&dir, 20);
    let yaml = dir.join("test.yaml");
    let masks = data.join("masks").join("synth");
    std::fs::write(
        &yaml,
        format!("DATA:\n  dataset: synth\n  mask_root: {}\nTEST:\n  test_split: val\n  visualize: False\nTRAIN:\n  word_len: 12\n", masks.display()),
    )
    .unwrap();
    let json = dir.join("eval.json");
    // `detris eval --yaml` (plus `extra`) on two refs; its eval.json.
    let eval = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["eval", "--yaml", yaml.to_str().unwrap(), "--limit", "2", "--threads", "1"];
        args.extend(["--device", "cpu", "--json", json.to_str().unwrap()]);
        args.extend(extra);
        detris_checked(&args);
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
    };
    let report = eval(&[]);
    assert_eq!(report[0]["split"], "val", "the YAML's test_split");
    assert_eq!(report[0]["dataset"], "synth");
    // --split wins over the YAML.
    let report = eval(&["--split", "test"]);
    assert_eq!(report[0]["split"], "test");
    std::fs::remove_dir_all(&dir).ok();
}
