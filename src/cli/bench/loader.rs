//! `detris bench --loader MANIFEST`: how fast a manifest opens, what its index costs in
//! memory, and how many training samples per second the loader decodes and pre-processes
//! (the figure to set against a training step's rate from `--train`).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use detris_io::data::loader::{Loader, LoaderOptions, Mode, RefSource};

/// Resident memory now, bytes (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Opens `manifest`, then loads `batches` training batches of `batch` at `size` px with
/// `workers` threads (the first batch is a warm-up, not timed), and prints the figures.
pub fn run(manifest: &Path, size: usize, workers: usize, batch: usize, batches: usize) -> Result<()> {
    let before = resident_bytes();
    let started = Instant::now();
    let source = RefSource::manifest(manifest).with_context(|| format!("--loader {}", manifest.display()))?;
    let open_s = started.elapsed().as_secs_f64();
    let index_bytes = resident_bytes().saturating_sub(before);
    println!(
        "loader: {} opened in {open_s:.2} s: {} refs, {} bad lines, resident memory +{:.1} MB",
        manifest.display(),
        source.len(),
        source.bad_lines().len(),
        index_bytes as f64 / 1e6
    );
    let opts = LoaderOptions { input_size: size, word_len: 17, batch_size: batch, workers, prefetch: 2, seed: 0 };
    let loader = Loader::open(source, Mode::Train, opts)?;
    let mut epoch = loader.epoch(0);
    epoch.next().context("the manifest holds less than one batch")??;
    let (started, mut samples) = (Instant::now(), 0);
    for b in epoch.take(batches) {
        samples += b?.len;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "loader: {:.1} samples/s at {size} px with {workers} worker thread(s) ({samples} samples in {seconds:.2} s, \
         batch {batch}); resident memory {:.1} MB",
        samples as f64 / seconds,
        resident_bytes() as f64 / 1e6
    );
    Ok(())
}
