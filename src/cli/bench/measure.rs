//! The measuring of `detris bench` (a tool of the command line, not of the library):
//! seconds per image and peak memory of a DETRIS variant with
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

use detris::config::DetrisConfig;
use detris::device::{DeviceArg, Precision};
use detris::model::init::randomise;
use detris::model::packed_linear::{Epilogue, PackedLinear, Packing};
use detris::model::{Ctx, Detris, Lever, Levers};

/// Which computation a case times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchMode {
    /// The official computation, one full pass per sentence.
    Plain,
    /// The levers that measured faster ([`Levers::FAST`]); the
    /// text-independent blocks shared by the sentences.
    Fast,
    /// The plain mode plus one lever.
    Only(Lever),
}

impl BenchMode {
    pub fn levers(self) -> Levers {
        match self {
            BenchMode::Plain => Levers::PLAIN,
            BenchMode::Fast => Levers::FAST,
            BenchMode::Only(lever) => lever.alone(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BenchMode::Plain => "plain",
            BenchMode::Fast => "fast",
            BenchMode::Only(lever) => lever.name(),
        }
    }
}

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchCase {
    pub variant: String,
    pub input_size: usize,
    /// Sentences about the one image (inference, batch 1).
    pub sentences: usize,
    pub mode: BenchMode,
    pub threads: i32,
    pub device: DeviceArg,
    /// The weights' and activations' type at inference, autocast's in
    /// training (never `auto`: the bench resolves it first).
    pub precision: Precision,
    /// Images per pass (each with one sentence).
    #[serde(default = "one")]
    pub batch: usize,
    /// Sentences per pass for K sentences in the fast mode (None: the device's
    /// default, [`detris::model::detris::sentence_batch`]).
    #[serde(default)]
    pub sentence_batch: Option<usize>,
    /// A training step (forward, loss, backward, Adam) instead of inference.
    #[serde(default)]
    pub train: bool,
    /// cuDNN on CUDA (the official training switches it off).
    #[serde(default = "yes")]
    pub cudnn: bool,
    /// Data-parallel ranks of a training step (processes on this machine, over Gloo, each
    /// with `threads` threads and `batch / ranks` images; gradients averaged, SyncBatchNorm).
    #[serde(default = "one")]
    pub ranks: usize,
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchResult {
    pub case: BenchCase,
    /// Median seconds per pass (the whole batch, or all the sentences).
    pub median_s: f64,
    pub min_s: f64,
    pub runs: usize,
    /// Peak resident memory of the process, bytes.
    pub peak_rss: u64,
    /// CUDA memory the case took at its peak (weights, activations, the
    /// caching allocator's reserve, workspaces), bytes.
    pub peak_gpu: Option<u64>,
}

impl BenchResult {
    /// Images per second (sentences per second for K sentences on one image).
    pub fn per_second(&self) -> f64 {
        (self.case.batch * self.case.sentences) as f64 / self.median_s
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), bytes.
pub fn peak_rss() -> u64 {
    detris::device::peak_rss_kib().map_or(0, |kib| kib * 1024)
}

impl BenchCase {
    /// A short label for the table: the task, the mode, how K sentences
    /// were batched and, on CUDA, cuDNN's state.
    pub fn label(&self) -> String {
        let task = if self.train { "train" } else { "infer" };
        let batched = match self.sentence_batch {
            Some(n) if n > 1 => format!(" ({n} a pass)"),
            _ => String::new(),
        };
        let cudnn = if self.device != DeviceArg::Cpu && !self.cudnn { " -cudnn" } else { "" };
        let ranks = if self.ranks > 1 { format!(" {}r", self.ranks) } else { String::new() };
        format!("{task} {}{batched}{cudnn}{ranks}", self.mode.name())
    }
}

/// Sentences of realistic length: SOT, 8 words, EOT, padding. (n, L) int64.
fn random_ids(cfg: &DetrisConfig, n: i64, device: Device) -> Tensor {
    let ids = Tensor::zeros([n, cfg.word_len as i64], (Kind::Int64, device));
    let _ = ids.narrow(1, 0, 1).fill_(cfg.sot);
    let _ = ids.narrow(1, 1, 8).copy_(&Tensor::randint_low(300, 40000, [n, 8], (Kind::Int64, device)));
    let _ = ids.narrow(1, 9, 1).fill_(cfg.eot);
    ids
}

fn synchronize(device: Device) {
    if let Device::Cuda(n) = device {
        tch::Cuda::synchronize(n as i64);
    }
}

/// Runs one case in this process.
pub fn run_case(case: &BenchCase, warmup: usize, runs: usize) -> Result<BenchResult> {
    if case.threads > 0 {
        tch::set_num_threads(case.threads);
    }
    let device = case.device.open()?;
    if case.batch == 0 || case.sentences == 0 {
        anyhow::bail!("a bench case needs at least one image and one sentence");
    }
    if case.batch > 1 && case.sentences > 1 {
        anyhow::bail!("K sentences are measured on one image (batch 1)");
    }
    let (rank, world) = detris::distributed::rank_and_size();
    if world != case.ranks {
        anyhow::bail!("a case of {} rank(s) runs in a group of {world}", case.ranks);
    }
    if case.batch % world != 0 || (world > 1 && !case.train) {
        anyhow::bail!("several ranks time training steps whose batch divides over them");
    }
    // The official data-parallel recipe: the global batch split over the ranks, SyncBatchNorm.
    let sync_bn = detris::distributed::sync_bn::SyncBn::for_run(true);
    let gpu_before = device.is_cuda().then(|| {
        let _ = Tensor::zeros([1], (Kind::Float, device));
        synchronize(device);
        detris::device::cuda_memory_in_use()
    });
    if device.is_cuda() {
        tch::Cuda::set_user_enabled_cudnn(case.cudnn);
        tch::Cuda::cudnn_set_benchmark(case.cudnn);
    }
    let mut cfg = DetrisConfig::variant(&case.variant)?;
    cfg.input_size = case.input_size;
    cfg.validate()?;
    let kind = case.precision.kind().context("a bench case's precision is resolved before it runs")?;
    // Inference holds its weights in `kind` from the start; training keeps f32 parameters.
    let mut model = Detris::new_in(cfg.clone(), device, if case.train { Kind::Float } else { kind })?;
    randomise(&model, 0);
    if !case.train {
        // As inference loads it: the frozen linear layers packed where the precision asks.
        detris::model::packing::pack_for_inference(&mut model, case.precision)?;
    }
    let s = cfg.input_size as i64;
    let b = (case.batch / world) as i64;
    let levers = case.mode.levers();
    let mut pass: Box<dyn FnMut() -> Result<()> + '_> = if case.train {
        // The official recipe: backbones frozen, adapters, neck, decoder and
        // projector trained; the precision is autocast's.
        let mut precision = detris::train::precision::MixedPrecision::new(case.precision, device)?;
        let trainable: Vec<(String, Tensor)> =
            model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
        let mut opt = detris::train::adam::Adam::new(trainable, 1e-4);
        tch::manual_seed(rank as i64); // each rank its own images
        let img = Tensor::randn([b, 3, s, s], (Kind::Float, device));
        let ids = random_ids(&cfg, b, device);
        let target = Tensor::rand([b, 1, s, s], (Kind::Float, device)).gt(0.7).to_kind(Kind::Float);
        let model = &model;
        Box::new(move || {
            let sync_bn = sync_bn.as_ref();
            detris::train::trainer::train_step(model, &mut opt, &img, &ids, &target, levers, sync_bn, &mut precision)?;
            synchronize(device);
            Ok(())
        })
    } else {
        model.vs.freeze();
        let model = &model;
        let k = case.sentences as i64;
        let img = Tensor::randn([b, 3, s, s], (kind, device));
        let ids = random_ids(&cfg, b * k, device);
        let ctx = Ctx { train: false, levers, trace: None, sync_bn: None };
        let shared = case.mode == BenchMode::Fast;
        let sentence_batch = case
            .sentence_batch
            .map_or(detris::model::detris::sentence_batch(device, kind, cfg.image_tokens() as i64), |n| n as i64);
        Box::new(move || {
            tch::no_grad(|| {
                let _out = if b > 1 {
                    model.forward(&img, &ids, &ctx)
                } else if shared {
                    model.forward_sentences_batched(&img, &ids, sentence_batch, &ctx)
                } else {
                    // The other modes run one full pass per sentence, as the official code.
                    let outs: Vec<Tensor> = (0..k).map(|i| model.forward(&img, &ids.narrow(0, i, 1), &ctx)).collect();
                    Tensor::cat(&outs, 0)
                };
                synchronize(device);
            });
            Ok(())
        })
    };
    for _ in 0..warmup {
        pass()?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        pass()?;
        times.push(t.elapsed().as_secs_f64());
    }
    drop(pass);
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let peak_gpu =
        gpu_before.flatten().and_then(|before| Some(detris::device::cuda_memory_in_use()?.saturating_sub(before)));
    Ok(BenchResult {
        case: case.clone(),
        median_s: times[times.len() / 2],
        min_s: times[0],
        runs,
        peak_rss: peak_rss(),
        peak_gpu,
    })
}

/// Runs a case in a child process (`detris bench --one JSON`), or in `case.ranks` child
/// processes that form a process group, and reads its (rank 0's) result.
pub fn run_case_isolated(case: &BenchCase, warmup: usize, runs: usize) -> Result<BenchResult> {
    let exe = std::env::current_exe().context("cannot find the detris executable")?;
    let args: Vec<std::ffi::OsString> =
        ["bench", "--warmup", &warmup.to_string(), "--runs", &runs.to_string(), "--one", &serde_json::to_string(case)?]
            .iter()
            .map(Into::into)
            .collect();
    let port = if case.ranks > 1 { detris::distributed::launch::free_port()? } else { 0 };
    let children = (0..case.ranks.max(1))
        .map(|rank| {
            let mut c = if case.ranks > 1 {
                detris::distributed::launch::rank_command(&exe, &args, rank, case.ranks, port)
            } else {
                let mut c = std::process::Command::new(&exe);
                c.args(&args);
                c
            };
            c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot start the benchmark child process")?;
    let mut outputs = Vec::new();
    for child in children {
        outputs.push(child.wait_with_output()?);
    }
    if let Some((rank, out)) = outputs.iter().enumerate().find(|(_, o)| !o.status.success()) {
        anyhow::bail!("benchmark case {case:?} failed (rank {rank}): {}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&outputs[0].stdout);
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
/// an `m×k · k×n` product in `kind` on `device`: the ceiling that the
/// model's GFLOP/s is compared with. f32 on CUDA is true f32 (no TF32), as
/// libtorch's default.
pub fn matmul_gflops(m: i64, k: i64, n: i64, kind: Kind, device: Device) -> f64 {
    let a = Tensor::randn([m, k], (kind, device));
    let b = Tensor::randn([k, n], (kind, device));
    let _ = a.matmul(&b);
    synchronize(device);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let _ = a.matmul(&b);
        synchronize(device);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// The rate of `m×k · k×n` products (bf16 activations) through oneDNN's packed weights on
/// the CPU, GFLOP/s (best of several runs): the ceiling of a precision whose products run
/// packed. int8 products use the CPU's int8 dot-product units (VNNI, AMX-INT8), which
/// `matmul` never reaches.
pub fn packed_linear_gflops(m: i64, k: i64, n: i64, packing: Packing) -> Result<f64> {
    let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.02;
    let layer = PackedLinear::new(packing, &w, None, m)?;
    let x = Tensor::randn([m, k], (Kind::BFloat16, Device::Cpu));
    let _ = layer.forward(&x, Epilogue::None)?;
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let _ = layer.forward(&x, Epilogue::None)?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

/// `(trainable, total)` parameters of `model`, counted as the official `tools/latency.py`
/// counts `model.parameters()`: BatchNorm's running statistics are buffers, not parameters.
pub fn parameter_counts(model: &Detris) -> (i64, i64) {
    let mut counts = (0, 0);
    for (name, v) in model.vs.variables() {
        if name.ends_with("running_mean") || name.ends_with("running_var") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let n = v.numel() as i64;
        counts.1 += n;
        if v.requires_grad() {
            counts.0 += n;
        }
    }
    counts
}

/// The reference a result is compared with: the plain mode (cuDNN off on
/// CUDA, as the official code) of the same variant, size, sentences, batch
/// and task.
fn baseline<'a>(results: &'a [BenchResult], c: &BenchCase) -> Option<&'a BenchResult> {
    results.iter().find(|p| {
        let q = &p.case;
        q.mode == BenchMode::Plain
            && q.precision == Precision::F32
            && q.variant == c.variant
            && q.input_size == c.input_size
            && q.sentences == c.sentences
            && q.batch == c.batch
            && q.train == c.train
            && q.device == c.device
            && q.ranks == c.ranks
    })
}

/// Data-parallel scaling: for each training result on several ranks, the same case on one
/// rank: (result, one-rank result, speed-up t₁/t_N, efficiency speed-up / N).
pub fn scaling(results: &[BenchResult]) -> Vec<(&BenchResult, &BenchResult, f64, f64)> {
    results
        .iter()
        .filter(|r| r.case.ranks > 1)
        .filter_map(|r| {
            let one = results
                .iter()
                .find(|o| BenchCase { ranks: r.case.ranks, ..o.case.clone() } == r.case && o.case.ranks == 1)?;
            let speedup = one.median_s / r.median_s;
            Some((r, one, speedup, speedup / r.case.ranks as f64))
        })
        .collect()
}

/// Prints one line per result; `peak_gflops` (the machine's matrix-product
/// rate, per precision) adds a "% of peak" column (against the case's own
/// precision: int8's is its packed int8 product) and a "% of the bf16 peak"
/// one (the issue's yardstick for every case). Training GFLOP counts a
/// step as 2 forwards (the frozen backbones need input gradients only).
pub fn print_table(results: &[BenchResult], peak_gflops: &dyn Fn(Precision) -> Option<f64>) {
    println!(
        "{:<15} {:>4} {:>3} {:>3} {:>22} {:>5} {:>9} {:>8} {:>9} {:>6} {:>7} {:>8} {:>8} {:>6}",
        "variant",
        "size",
        "K",
        "B",
        "task mode",
        "prec",
        "s/pass",
        "img/s",
        "GFLOP/s",
        "%peak",
        "%bf16pk",
        "RSS MB",
        "GPU MB",
        "×plain"
    );
    for r in results {
        let c = &r.case;
        let ratio =
            baseline(results, c).map(|p| format!("{:.2}", r.median_s / p.median_s)).unwrap_or_else(|| "-".into());
        let per_image = gflop_per_image(&c.variant, c.input_size) * if c.train { 2.0 } else { 1.0 };
        let gflops = per_image * r.per_second();
        // N ranks have N times the one process's ceiling.
        let share = |p: Precision| {
            peak_gflops(p)
                .filter(|p| *p > 0.0)
                .map(|p| format!("{:.1}", 100.0 * gflops / (p * c.ranks as f64)))
                .unwrap_or_else(|| "-".into())
        };
        let (of_peak, of_bf16) = (share(c.precision), share(Precision::Bf16));
        let gpu = r.peak_gpu.map(|g| format!("{:.0}", g as f64 / 1e6)).unwrap_or_else(|| "-".into());
        println!(
            "{:<15} {:>4} {:>3} {:>3} {:>22} {:>5} {:>9.4} {:>8.2} {:>9.1} {:>6} {:>7} {:>8.0} {:>8} {:>6}",
            c.variant,
            c.input_size,
            c.sentences,
            c.batch,
            c.label(),
            c.precision.to_string(),
            r.median_s,
            r.per_second(),
            gflops,
            of_peak,
            of_bf16,
            r.peak_rss as f64 / 1e6,
            gpu,
            ratio
        );
    }
}
