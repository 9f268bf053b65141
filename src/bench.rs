//! `detris bench`: seconds per image and peak memory of a DETRIS variant with
//! random weights (no files needed), for the plain reference mode (the
//! official computation step by step) and the fast mode, side by side, so
//! every speed-up is a ratio measured on one machine in one run.
//!
//! Each configuration runs in a child process of its own, so that its peak
//! resident memory (VmHWM) is its own.

use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::DetrisConfig;
use crate::model::{Ctx, Detris, Levers};

/// One measured configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchCase {
    pub variant: String,
    pub input_size: usize,
    /// Sentences about the one image.
    pub sentences: usize,
    /// `plain` (the official computation, one full pass per sentence), `fast`
    /// (every lever, the text-independent blocks shared by the sentences), or
    /// one lever's name (the plain mode plus that lever, see [`Levers::named`]).
    pub mode: String,
    pub threads: i32,
    pub device: String,
    /// `f32`, `f16` or `bf16`.
    pub precision: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub case: BenchCase,
    /// Median seconds per forward pass (the whole batch of sentences).
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
    /// Peak resident memory of the process, bytes.
    pub peak_rss: u64,
    /// Peak CUDA memory, bytes, where measured.
    pub peak_gpu: Option<u64>,
}

/// Peak resident set size of this process (Linux `VmHWM`), bytes.
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Fills every variable with small random values (frozen ones included, so
/// the arithmetic is that of a real model, not of zeros).
pub fn randomise(model: &Detris, seed: i64) {
    tch::manual_seed(seed);
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, v) in vars {
            let mut v = v.shallow_clone();
            if name.contains("running_var") || name.ends_with("gamma") || name.contains("norm") {
                let _ = v.uniform_(0.5, 1.5);
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
        }
    });
}

pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "auto" => Device::cuda_if_available(),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => anyhow::bail!("unknown device `{other}`: use cpu, cuda, cuda:N or auto"),
        },
    })
}

pub fn precision_kind(p: &str) -> Result<Kind> {
    Ok(match p {
        "f32" => Kind::Float,
        "f16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        other => anyhow::bail!("unknown precision `{other}`: use f32, f16 or bf16"),
    })
}

impl BenchCase {
    pub fn levers(&self) -> Result<Levers> {
        match self.mode.as_str() {
            "plain" => Ok(Levers::PLAIN),
            "fast" => Ok(Levers::FAST),
            name => Levers::named().into_iter().find(|(n, _)| *n == name).map(|(_, l)| l).with_context(|| {
                let names: Vec<&str> = Levers::named().iter().map(|(n, _)| *n).collect();
                format!("unknown bench mode `{name}`: use plain, fast or one of {}", names.join(", "))
            }),
        }
    }
}

/// Runs one case in this process.
pub fn run_case(case: &BenchCase, warmup: usize, runs: usize) -> Result<BenchResult> {
    if case.threads > 0 {
        tch::set_num_threads(case.threads);
    }
    let device = parse_device(&case.device)?;
    let mut cfg = DetrisConfig::variant(&case.variant)?;
    cfg.input_size = case.input_size;
    cfg.validate()?;
    let mut model = Detris::new(cfg.clone(), device)?;
    randomise(&model, 0);
    model.vs.freeze();
    let kind = precision_kind(&case.precision)?;
    if kind != Kind::Float {
        model.vs.set_kind(kind);
    }
    let s = cfg.input_size as i64;
    let k = case.sentences as i64;
    let img = Tensor::randn([1, 3, s, s], (kind, device));
    // Sentences of realistic length: SOT, 8 words, EOT, padding.
    let ids = Tensor::zeros([k, cfg.word_len as i64], (Kind::Int64, device));
    let _ = ids.narrow(1, 0, 1).fill_(cfg.sot);
    let _ = ids.narrow(1, 1, 8).copy_(&Tensor::randint_low(300, 40000, [k, 8], (Kind::Int64, device)));
    let _ = ids.narrow(1, 9, 1).fill_(cfg.eot);
    let ctx = Ctx { train: false, levers: case.levers()?, trace: None };
    let shared = case.mode == "fast";
    let forward = || {
        tch::no_grad(|| {
            let out = if shared {
                model.forward_sentences(&img, &ids, &ctx)
            } else {
                // The other modes run one full pass per sentence, as the official code.
                let outs: Vec<Tensor> = (0..k).map(|i| model.forward(&img, &ids.narrow(0, i, 1), &ctx)).collect();
                Tensor::cat(&outs, 0)
            };
            if let Device::Cuda(_) = device {
                tch::Cuda::synchronize(0);
            }
            out
        })
    };
    for _ in 0..warmup {
        let _ = forward();
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let _ = forward();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(BenchResult {
        case: case.clone(),
        median_s: times[times.len() / 2],
        min_s: times[0],
        runs,
        peak_rss: peak_rss(),
        peak_gpu: None,
    })
}

/// Runs a case in a child process (`detris bench --one JSON`) and reads its result.
pub fn run_case_isolated(case: &BenchCase, warmup: usize, runs: usize) -> Result<BenchResult> {
    let exe = std::env::current_exe().context("cannot find the detris executable")?;
    let out = std::process::Command::new(exe)
        .args([
            "bench",
            "--warmup",
            &warmup.to_string(),
            "--runs",
            &runs.to_string(),
            "--one",
            &serde_json::to_string(case)?,
        ])
        .output()
        .context("cannot start the benchmark child process")?;
    if !out.status.success() {
        anyhow::bail!("benchmark case {case:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("benchmark child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// The GFLOP of one forward pass per image, from the spec's counts at 448
/// scaled by the token count (attention is a small share at these sizes).
pub fn gflop_per_image(variant: &str, input_size: usize) -> f64 {
    let base = if variant.contains('l') && !variant.ends_with('b') { 830.0 } else { 316.0 };
    base * (input_size as f64 / 448.0).powi(2)
}

/// The machine's matrix-multiply rate, GFLOP/s (best of several runs), for
/// an `m×k · k×n` f32 product on `threads` threads: the ceiling that the
/// model's GFLOP/s is compared with.
pub fn sgemm_gflops(m: i64, k: i64, n: i64, threads: i32) -> f64 {
    if threads > 0 {
        tch::set_num_threads(threads);
    }
    let a = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([k, n], (Kind::Float, Device::Cpu));
    let _ = a.matmul(&b);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let _ = a.matmul(&b);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// Prints one line per result; `peak_gflops` (the machine's sgemm rate) adds a
/// "% of peak" column.
pub fn print_table(results: &[BenchResult], peak_gflops: Option<f64>) {
    println!(
        "{:<16} {:>5} {:>3} {:>16} {:>5} {:>10} {:>10} {:>9} {:>7} {:>9} {:>8}",
        "variant", "size", "K", "mode", "prec", "s/pass", "s/sent", "GFLOP/s", "% peak", "peak MB", "vs plain"
    );
    for r in results {
        let c = &r.case;
        let plain = results.iter().find(|p| {
            p.case.mode == "plain"
                && p.case.variant == c.variant
                && p.case.input_size == c.input_size
                && p.case.sentences == c.sentences
                && p.case.device == c.device
        });
        let ratio = plain.map(|p| format!("{:.2}×", r.median_s / p.median_s)).unwrap_or_else(|| "-".into());
        let gflops = gflop_per_image(&c.variant, c.input_size) * c.sentences as f64 / r.median_s;
        let of_peak = peak_gflops.map(|p| format!("{:.0}%", 100.0 * gflops / p)).unwrap_or_else(|| "-".into());
        println!(
            "{:<16} {:>5} {:>3} {:>16} {:>5} {:>10.3} {:>10.3} {:>9.1} {:>7} {:>9.0} {:>8}",
            c.variant,
            c.input_size,
            c.sentences,
            c.mode,
            c.precision,
            r.median_s,
            r.median_s / c.sentences as f64,
            gflops,
            of_peak,
            r.peak_rss as f64 / 1e6,
            ratio
        );
    }
}
