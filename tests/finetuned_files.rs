//! A fine-tuned `best.safetensors` is usable as it is, whatever the run
//! started from: self-contained (the shipped model's frozen weights copied),
//! or naming its base by path and digest and finding it (an official `.pth`,
//! the pretrained backbones); a base gone or changed is refused by name, and
//! `detris export` writes a self-contained file.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{
    detris_checked, detris_unchecked, fixture, fresh_temp_dir, synth_data, synth_eval_args, synth_train_args,
};
use detris::weights::base::{Base, BaseRole, META_BASE};
use detris::weights::{self, ConfigChoice, WeightFiles};
use tch::Device;

/// One epoch of fine-tuning on `data` into `out`, from the model files `start`.
fn fine_tune(data: &Path, out: &Path, start: &[&str]) {
    let mut extra = vec!["--epochs", "1"];
    extra.extend_from_slice(start);
    detris_checked(&synth_train_args(data, out, &extra));
}

fn metadata(path: &Path) -> BTreeMap<String, String> {
    detris_io::safetensors_file::read(path).unwrap().1
}

/// Every weight of the model a file loads into (with no other file named), by name.
fn loaded(path: &Path) -> detris_io::tensor::TensorMap {
    let files = WeightFiles { checkpoint: Some(path.to_path_buf()), ..Default::default() };
    let model = weights::load_model(&files, &ConfigChoice::default(), Device::Cpu).unwrap();
    weights::state_dict(&model, false).unwrap()
}

fn same_weights(a: &detris_io::tensor::TensorMap, b: &detris_io::tensor::TensorMap) -> bool {
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| u.shape == t.shape && u.bytes() == t.bytes()))
}

/// `detris eval` on the validation split with `checkpoint` alone (its table beside the data).
fn eval(checkpoint: &Path, data: &Path) -> std::process::Output {
    let json = data.with_file_name("eval.json");
    detris_unchecked(&synth_eval_args(data, "val", &json, Some(checkpoint), &["--limit", "4"]))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_fine_tuned_shipped_model_is_self_contained_and_keeps_its_pruned_vocabulary() {
    let dir = fresh_temp_dir("finetuned-shipped");
    let data = synth_data(&dir, 12);
    let run = dir.join("run");
    let shipped = detris::shipped::default_checkpoint().unwrap();
    fine_tune(&data, &run, &["--checkpoint", shipped.to_str().unwrap()]);
    let best = run.join("best.safetensors");
    // Small start file: its frozen weights are copied (`--base-weights auto`), no base named.
    assert!(!metadata(&best).contains_key(META_BASE));
    let (shipped_map, _) = detris_io::safetensors_file::read(&shipped).unwrap();
    let (best_map, _) = detris_io::safetensors_file::read(&best).unwrap();
    assert_eq!(best_map[weights::VOCAB_IDS].to_i64_vec(), shipped_map[weights::VOCAB_IDS].to_i64_vec());

    let out = eval(&best, &data);
    assert!(out.status.success(), "{}", stderr(&out));
    let photo = std::fs::read_dir(data.join("images/train2014")).unwrap().next().unwrap().unwrap().path();
    let masks = dir.join("masks");
    detris_checked(&[
        "segment",
        "--checkpoint",
        best.to_str().unwrap(),
        "--image",
        photo.to_str().unwrap(),
        "--text",
        "the red circle",
        "--out",
        masks.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(std::fs::read_dir(&masks).unwrap().count() > 0);
    // The library reads the same file, with the shipped model's known token ids.
    let files = WeightFiles { checkpoint: Some(best.clone()), ..Default::default() };
    let model = weights::load_model(&files, &ConfigChoice::default(), Device::Cpu).unwrap();
    assert_eq!(model.known_token_ids, Some(shipped_map[weights::VOCAB_IDS].to_i64_vec()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_naming_an_official_pth_finds_it_refuses_it_gone_or_changed_and_exports_self_contained() {
    let dir = fresh_temp_dir("finetuned-official");
    let data = synth_data(&dir, 12);
    let base = dir.join("released").join("detris_refcoco.pth");
    std::fs::create_dir_all(base.parent().unwrap()).unwrap();
    std::fs::copy(fixture("tiny/detris_ckpt.pth"), &base).unwrap();
    let cfg = fixture("tiny/config.json");
    let run = dir.join("run");
    #[rustfmt::skip]
    fine_tune(&data, &run, &[
        "--checkpoint", base.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--base-weights", "link",
    ]);
    let best = run.join("best.safetensors");
    let named: Base = serde_json::from_str(&metadata(&best)[META_BASE]).unwrap();
    assert_eq!(named.files.len(), 1);
    assert_eq!(
        (named.files[0].role, named.files[0].path.clone()),
        (BaseRole::Checkpoint, base.canonicalize().unwrap())
    );
    assert_eq!(named.files[0].size, std::fs::metadata(&base).unwrap().len());

    // Found: the base's frozen weights under the run's trained ones.
    let whole = loaded(&best);
    let (mut best_map, _) = detris_io::safetensors_file::read(&best).unwrap();
    best_map.retain(|k, _| !k.starts_with("adam."));
    let official = weights::read_weights(&base).unwrap().0;
    assert!(best_map.len() < whole.len(), "the linked file holds only the trained weights");
    for (name, t) in &whole {
        let from = best_map.get(name).or_else(|| official.get(name)).unwrap_or_else(|| panic!("{name} from nowhere"));
        // f32 both ways: copied bytes.
        assert!(from.bytes() == t.bytes(), "{name} is not the file's");
    }
    let out = eval(&best, &data);
    assert!(out.status.success(), "{}", stderr(&out));

    // Exported while the base is there: every weight, no base named, the same model.
    let exported = dir.join("model.safetensors");
    detris_checked(&[
        "export",
        "--checkpoint",
        best.to_str().unwrap(),
        "--out",
        exported.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(!metadata(&exported).contains_key(META_BASE));

    // Gone: refused, naming the base and the ways out; the export still loads.
    let moved = dir.join("elsewhere.pth");
    std::fs::rename(&base, &moved).unwrap();
    let e = stderr(&eval(&best, &data));
    eprintln!("{e}");
    assert!(e.contains("gone") && e.contains("released/detris_refcoco.pth"), "{e}");
    assert!(e.contains(&named.files[0].digest) && e.contains("--dinov2") && e.contains("detris export"), "{e}");
    assert!(same_weights(&loaded(&exported), &whole), "the exported file is not the model the linked one loads");

    // Changed (another file of the same kind in its place): refused with both digests.
    std::fs::copy(fixture("tiny/dinov2.pth"), &base).unwrap();
    let e = stderr(&eval(&best, &data));
    eprintln!("{e}");
    assert!(e.contains("has changed") && e.contains(&named.files[0].digest), "{e}");
    std::fs::rename(&moved, &base).unwrap();
    let out = eval(&best, &data);
    assert!(out.status.success(), "put back, the base is found again: {}", stderr(&out));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_started_from_the_backbones_names_them_finds_them_and_resumes() {
    let dir = fresh_temp_dir("finetuned-backbones");
    let data = synth_data(&dir, 12);
    let backbones: Vec<PathBuf> = ["dinov2.pth", "clip.pt"]
        .iter()
        .map(|f| {
            let to = dir.join(f);
            std::fs::copy(fixture(&format!("tiny/{f}")), &to).unwrap();
            to
        })
        .collect();
    let cfg = fixture("tiny/config.json");
    let run = dir.join("run");
    let (d, c) = (backbones[0].to_str().unwrap(), backbones[1].to_str().unwrap());
    let start = ["--dinov2", d, "--clip", c, "--config", cfg.to_str().unwrap(), "--base-weights", "link"];
    fine_tune(&data, &run, &start);
    let best = run.join("best.safetensors");
    let named: Base = serde_json::from_str(&metadata(&best)[META_BASE]).unwrap();
    let roles: Vec<BaseRole> = named.files.iter().map(|f| f.role).collect();
    assert_eq!(roles, [BaseRole::Dinov2, BaseRole::Clip]);
    // Usable alone, and equal to the model the backbones and the file give together (as before).
    let alone = loaded(&best);
    let files = WeightFiles {
        checkpoint: Some(best.clone()),
        dinov2: Some(backbones[0].clone()),
        clip: Some(backbones[1].clone()),
    };
    let together = weights::load_model(&files, &ConfigChoice::default(), Device::Cpu).unwrap();
    assert!(same_weights(&alone, &weights::state_dict(&together, false).unwrap()));
    let out = eval(&best, &data);
    assert!(out.status.success(), "{}", stderr(&out));

    // A second epoch resumed from the linked `last`.
    let mut more = vec!["--resume"];
    more.extend_from_slice(&start);
    let mut args = synth_train_args(&data, &run, &more);
    args.extend(["--epochs", "2"]);
    detris_checked(&args);
    let last = run.join("last.safetensors");
    assert!(metadata(&last).contains_key(META_BASE));
    let out = eval(&last, &data);
    assert!(out.status.success(), "{}", stderr(&out));

    // A backbone gone: refused by name.
    std::fs::remove_file(&backbones[1]).unwrap();
    let e = stderr(&eval(&last, &data));
    assert!(e.contains("gone") && e.contains("clip.pt") && e.contains("--clip"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
