//! Helpers shared by the integration tests: fixture paths and the tiny
//! official model.
#![allow(dead_code)]

/// The binary's HTTP client (`detris serve-load` uses it), for the server's tests.
#[path = "../../src/cli/http_client.rs"]
pub mod http_client;

use std::collections::BTreeMap;

use detris::{Detris, DetrisConfig};
use tch::{Device, Kind, Tensor};

pub fn fixture(rel: &str) -> std::path::PathBuf {
    detris_io::fixtures::path(rel)
}

/// A fixture safetensors file through tch's own reader (independent of
/// detris-io, so a reader bug cannot hide a model bug).
pub fn read_st(rel: &str) -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture(rel)).unwrap().into_iter().collect()
}

pub fn tiny_config() -> DetrisConfig {
    detris::weights::read_config_file(&fixture("tiny/config.json")).unwrap()
}

/// The device the parity tests run on: `DETRIS_TEST_DEVICE` (cpu, cuda, …;
/// default cpu), so that the same test binary checks a GPU.
pub fn test_device() -> Device {
    let name = std::env::var("DETRIS_TEST_DEVICE").unwrap_or_else(|_| "cpu".into());
    detris::device::parse_device(&name).unwrap()
}

/// The tiny model with the weights of `tiny/state_dict.safetensors`.
pub fn tiny_model(cfg: DetrisConfig, kind: Kind) -> Detris {
    tiny_model_on(cfg, kind, Device::Cpu)
}

/// [`tiny_model`] on a device; `kind` is any floating type.
pub fn tiny_model_on(cfg: DetrisConfig, kind: Kind, device: Device) -> Detris {
    let mut model = Detris::new(cfg, device).unwrap();
    let sd = read_st("tiny/state_dict.safetensors");
    let vars = model.vs.variables();
    for (k, v) in &sd {
        match vars.get(k) {
            Some(var) => tch::no_grad(|| var.shallow_clone().copy_(v)),
            None => assert!(k.ends_with("num_batches_tracked"), "unexpected {k}"),
        };
    }
    assert_eq!(vars.len(), sd.keys().filter(|k| !k.ends_with("num_batches_tracked")).count());
    if kind != Kind::Float {
        model.vs.set_kind(kind);
    }
    model
}

pub fn max_abs(t: &Tensor) -> f64 {
    if t.numel() == 0 {
        return 0.0;
    }
    t.to_kind(Kind::Double).abs().max().double_value(&[])
}

/// max |a − b|, on the CPU in f64 (either may live on another device).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let f64_cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
    max_abs(&(f64_cpu(a) - f64_cpu(b)))
}

/// ‖a − b‖ / ‖b‖, on the CPU in f64.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let f64_cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = f64_cpu(b);
    (f64_cpu(a) - &b).norm().double_value(&[]) / b.norm().double_value(&[])
}

/// A fresh folder under the system's temporary one, unique to this process.
pub fn fresh_temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("detris-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the detris binary (progress bars off), whatever its exit status.
pub fn detris_unchecked(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_detris"))
        .args(args)
        .env("DETRIS_NO_PROGRESS", "1")
        .output()
        .expect("run detris")
}

/// `out`, after panicking with its stdout and stderr unless `what` succeeded.
pub fn assert_success(out: std::process::Output, what: &str) -> std::process::Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs the detris binary (progress bars off); panics with its output unless it succeeds.
pub fn detris_checked(args: &[&str]) -> std::process::Output {
    assert_success(detris_unchecked(args), &format!("detris {args:?}"))
}

/// Runs the detris binary (progress bars off) and returns its stderr and
/// stdout; panics with them unless it succeeds.
pub fn detris_ok(args: &[&str]) -> String {
    let out = detris_checked(args);
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

/// `detris data synth` into `dir/data`: `images` photos at 112 px (seed 3), the small
/// synthetic set the command-line tests train and evaluate on.
pub fn synth_data(dir: &std::path::Path, images: usize) -> std::path::PathBuf {
    let data = dir.join("data");
    let n = images.to_string();
    detris_checked(&["data", "synth", "--out", data.to_str().unwrap(), "--seed", "3", "--images", &n, "--size", "112"]);
    data
}

/// The flags of a short training run on [`synth_data`]'s set, on the CPU with one
/// thread (batch 8, lr 3e-4, seed 5, 6 validation refs), then `extra`; [`set_flag`]
/// changes one.
pub fn synth_train_args<'a>(data: &'a std::path::Path, out: &'a std::path::Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        data.to_str().unwrap(),
        "--dataset",
        "synth",
        "--milestones",
        "1",
        "--batch-size",
        "8",
        "--lr",
        "3e-4",
        "--seed",
        "5",
        "--threads",
        "1",
        "--workers",
        "2",
        "--device",
        "cpu",
        "--val-limit",
        "6",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

/// The flags of `detris eval` on [`synth_data`]'s set on the CPU with one thread:
/// `split` (e.g. `val,test`), the table as JSON in `json`, `checkpoint` (none:
/// the shipped model), then `extra`.
pub fn synth_eval_args<'a>(
    data: &'a std::path::Path,
    split: &'a str,
    json: &'a std::path::Path,
    checkpoint: Option<&'a std::path::Path>,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["eval", "--data", data.to_str().unwrap(), "--dataset", "synth", "--split", split];
    args.extend(["--json", json.to_str().unwrap(), "--device", "cpu", "--threads", "1"]);
    if let Some(checkpoint) = checkpoint {
        args.extend(["--checkpoint", checkpoint.to_str().unwrap()]);
    }
    args.extend_from_slice(extra);
    args
}

/// Sets the value of `flag` (present in `args`).
pub fn set_flag<'a>(mut args: Vec<&'a str>, flag: &str, value: &'a str) -> Vec<&'a str> {
    let i = args.iter().position(|a| *a == flag).unwrap_or_else(|| panic!("{flag} is not in {args:?}"));
    args[i + 1] = value;
    args
}

/// A safetensors file's tensors, sorted by name.
pub fn sorted_safetensors(path: &std::path::Path) -> Vec<(String, Tensor)> {
    let mut v = Tensor::read_safetensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
