//! Batches for training and evaluation over any [`RefSource`]: a prepared split
//! (`anns/<ds>/<split>.json`, `images/train2014/`, `masks/<ds>/<id>.png`) or a manifest,
//! so real, synthetic and one's own data load the same way.
//!
//! Sentence choice follows the official code: training takes one random
//! sentence per ref per epoch (refs shuffled, last partial batch dropped),
//! validation the first sentence of every ref, test every sentence.
//!
//! Decoding and pre-processing run on a pool of `workers` threads, a few
//! batches ahead of the consumer (a bounded channel). The plan of an epoch
//! (which ref and sentence go into which batch) is drawn from
//! ChaCha8(seed, epoch) before any work starts, and every item is computed
//! from its own inputs only, so batches are identical for any worker count.

pub use super::source::{prepared_refs, LoaderRef, MaskSource, Origin, RefSource};
use crate::error::{Error, Result};
use crate::image::{load_rgb, preprocess, warp_mask, Letterbox};
use crate::tokenizer::{pad_mask, ClipTokenizer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Which sentences an epoch uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One random sentence per ref, refs shuffled, last partial batch dropped; soft targets.
    Train,
    /// First sentence of every ref, in order; original masks for the metrics.
    Val,
    /// Every sentence of every ref, in order; original masks for the metrics.
    Test,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Side of the square model input (448 in the official configs).
    pub input_size: usize,
    /// Token ids per sentence (17 for RefCOCO/+, 22 for RefCOCOg).
    pub word_len: usize,
    pub batch_size: usize,
    /// Decoding threads.
    pub workers: usize,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
    /// Seed of the training order and sentence choice.
    pub seed: u64,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions { input_size: 448, word_len: 17, batch_size: 32, workers: 4, prefetch: 2, seed: 0 }
    }
}

/// What the loader does with a sample it cannot load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BadSamples {
    /// The epoch ends with the sample's error (the default: nothing is dropped unnoticed).
    #[default]
    Stop,
    /// The batch comes without the sample, which is listed in [`Batch::skipped`].
    Skip,
}

/// A sample that could not be loaded: where it comes from and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SampleError {
    pub origin: Origin,
    pub ref_index: usize,
    pub sentence_index: usize,
    pub error: String,
}

impl std::fmt::Display for SampleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, sentence {}: {}", self.origin, self.sentence_index + 1, self.error)
    }
}

/// What an evaluation needs of one item, at the photo's resolution.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTarget {
    /// Ground truth, row-major `width × height`, 1 = foreground (any non-zero PNG value).
    pub mask: Vec<u8>,
    /// The mask PNG had another size than the photo and was resized (nearest) to it.
    pub mask_resized: bool,
}

/// One sample of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    /// Index into the loader's refs.
    pub ref_index: usize,
    pub sentence_index: usize,
    pub segment_id: String,
    /// The photo (the prepared image, or the manifest's `image` resolved).
    pub image: PathBuf,
    pub origin: Origin,
    pub sentence: String,
    /// The sentence was longer than `word_len` ids and cut.
    pub truncated: bool,
    /// Photo size and its letterbox into the model input.
    pub width: usize,
    pub height: usize,
    pub letterbox: Letterbox,
    /// Present in validation and test mode.
    pub eval: Option<EvalTarget>,
}

/// A batch of `len` samples, tensors flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub len: usize,
    pub input_size: usize,
    pub word_len: usize,
    /// (B, 3, S, S) CLIP-normalised letterboxed photos.
    pub images: Vec<f32>,
    /// (B, L) token ids.
    pub word_ids: Vec<i64>,
    /// (B, L) true = padding.
    pub pad_mask: Vec<bool>,
    /// (B, 1, S, S) soft training targets (training mode only).
    pub targets: Option<Vec<f32>>,
    pub items: Vec<BatchItem>,
    /// Planned samples left out because they could not be loaded ([`BadSamples::Skip`]
    /// only; `len` counts the others). A batch may then be empty.
    pub skipped: Vec<SampleError>,
}

/// Loads batches of one split for any number of epochs.
pub struct Loader {
    source: Arc<RefSource>,
    mode: Mode,
    opts: LoaderOptions,
    bad_samples: BadSamples,
    pool: Arc<rayon::ThreadPool>,
    /// Refs whose mask had to be resized to the photo size, with their segment ids.
    resized: Arc<Mutex<BTreeMap<usize, String>>>,
}

/// (ref index, sentence index) of each sample, batch by batch.
pub type Plan = Vec<Vec<(usize, usize)>>;

impl Loader {
    /// A loader over refs in memory (a prepared split: [`prepared_refs`]).
    pub fn new(refs: Vec<LoaderRef>, mode: Mode, opts: LoaderOptions) -> Result<Loader> {
        Loader::open(RefSource::from(refs), mode, opts)
    }

    /// A loader over any source (a prepared split, a manifest, one side of a split by photo).
    pub fn open(source: RefSource, mode: Mode, opts: LoaderOptions) -> Result<Loader> {
        if opts.batch_size == 0 || opts.input_size == 0 || opts.word_len < 2 {
            return Err(Error::input(format!(
                "loader: batch size {}, input size {} and word length {} must be ≥ 1, 1 and 2",
                opts.batch_size, opts.input_size, opts.word_len
            )));
        }
        if let Some(r) = (0..source.len()).find(|&r| source.sentence_count(r) == 0) {
            return Err(Error::input(format!("loader: {} has no sentences", source.origin(r))));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(opts.workers.max(1))
            .thread_name(|i| format!("detris-loader-{i}"))
            .build()
            .map_err(|e| Error::input(format!("loader: cannot start {} worker threads: {e}", opts.workers)))?;
        Ok(Loader {
            source: Arc::new(source),
            mode,
            opts,
            bad_samples: BadSamples::Stop,
            pool: Arc::new(pool),
            resized: Arc::default(),
        })
    }

    /// What to do with samples that cannot be loaded (default [`BadSamples::Stop`]).
    pub fn with_bad_samples(mut self, policy: BadSamples) -> Loader {
        self.bad_samples = policy;
        self
    }

    /// The refs this loader draws from.
    pub fn source(&self) -> &RefSource {
        &self.source
    }

    /// Number of refs.
    pub fn len(&self) -> usize {
        self.source.len()
    }

    pub fn is_empty(&self) -> bool {
        self.source.is_empty()
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Which samples epoch `epoch` holds, batch by batch.
    pub fn plan(&self, epoch: u64) -> Plan {
        let b = self.opts.batch_size;
        match self.mode {
            Mode::Train => {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&self.opts.seed.to_le_bytes());
                key[8..16].copy_from_slice(&epoch.to_le_bytes());
                let mut rng = ChaCha8Rng::from_seed(key);
                let mut order: Vec<usize> = (0..self.source.len()).collect();
                order.shuffle(&mut rng);
                let samples: Vec<(usize, usize)> =
                    order.into_iter().map(|r| (r, rng.gen_range(0..self.source.sentence_count(r)))).collect();
                samples.chunks_exact(b).map(<[_]>::to_vec).collect()
            }
            Mode::Val => {
                (0..self.source.len()).map(|r| (r, 0)).collect::<Vec<_>>().chunks(b).map(<[_]>::to_vec).collect()
            }
            Mode::Test => {
                let all: Vec<(usize, usize)> = (0..self.source.len())
                    .flat_map(|r| (0..self.source.sentence_count(r)).map(move |s| (r, s)))
                    .collect();
                all.chunks(b).map(<[_]>::to_vec).collect()
            }
        }
    }

    /// The batches of epoch `epoch`, loaded in the background.
    pub fn epoch(&self, epoch: u64) -> Batches {
        self.run_plan(self.plan(epoch))
    }

    /// The batches of epoch `epoch` from batch `first_batch` on (a resumed epoch): the
    /// batches before it are neither loaded nor decoded.
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> Batches {
        self.run_plan_from(self.plan(epoch), first_batch)
    }

    /// [`Self::run_plan`] from batch `first_batch` of `plan` on; the earlier batches are
    /// not loaded.
    pub fn run_plan_from(&self, mut plan: Plan, first_batch: usize) -> Batches {
        plan.drain(..first_batch.min(plan.len()));
        self.run_plan(plan)
    }

    /// The batches of any plan (e.g. one rank's share of an epoch), loaded
    /// in the background.
    pub fn run_plan(&self, plan: Plan) -> Batches {
        let total = plan.len();
        let (sender, receiver) = sync_channel(self.opts.prefetch.max(1));
        let job = Job {
            source: Arc::clone(&self.source),
            mode: self.mode,
            opts: self.opts.clone(),
            bad_samples: self.bad_samples,
            resized: Arc::clone(&self.resized),
        };
        let pool = Arc::clone(&self.pool);
        let window = self.opts.prefetch.max(1);
        let producer = std::thread::spawn(move || {
            // Load `window` batches at a time, all their samples in parallel.
            for batches in plan.chunks(window) {
                let samples: Vec<(usize, usize)> = batches.iter().flatten().copied().collect();
                let loaded: Vec<std::result::Result<Sample, SampleError>> =
                    pool.install(|| samples.par_iter().map(|&s| job.load(s)).collect());
                let mut loaded = loaded.into_iter();
                for batch in batches {
                    let result = job.assemble(loaded.by_ref().take(batch.len()).collect());
                    let failed = result.is_err();
                    if sender.send(result).is_err() || failed {
                        return; // consumer gone, or stop after the first error
                    }
                }
            }
        });
        Batches { receiver: Some(receiver), producer: Some(producer), remaining: total }
    }

    /// Segment ids of the refs whose mask PNG had another size than its photo
    /// (it was resized, nearest, to the photo size), among those loaded so far.
    pub fn resized_masks(&self) -> Vec<String> {
        let resized = self.resized.lock().unwrap_or_else(|e| e.into_inner());
        resized.values().cloned().collect()
    }
}

/// The batches of one epoch, in plan order. Ends after the first error.
pub struct Batches {
    receiver: Option<Receiver<Result<Batch>>>,
    producer: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Iterator for Batches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        let batch = self.receiver.as_ref()?.recv().ok();
        match &batch {
            Some(Ok(_)) => self.remaining -= 1,
            _ => self.receiver = None,
        }
        batch
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining))
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Unblock the producer, then wait for it so no thread outlives the epoch.
        self.receiver = None;
        if let Some(producer) = self.producer.take() {
            let _ = producer.join();
        }
    }
}

/// What the producer thread needs.
struct Job {
    source: Arc<RefSource>,
    mode: Mode,
    opts: LoaderOptions,
    bad_samples: BadSamples,
    resized: Arc<Mutex<BTreeMap<usize, String>>>,
}

/// One loaded sample, before batching.
struct Sample {
    image: Vec<f32>,
    ids: Vec<i64>,
    target: Option<Vec<f32>>,
    item: BatchItem,
}

impl Job {
    fn load(&self, (ref_index, sentence_index): (usize, usize)) -> std::result::Result<Sample, SampleError> {
        self.load_ref(ref_index, sentence_index).map_err(|e| SampleError {
            origin: self.source.origin(ref_index),
            ref_index,
            sentence_index,
            error: e.to_string(),
        })
    }

    fn load_ref(&self, ref_index: usize, sentence_index: usize) -> Result<Sample> {
        let r = self.source.get(ref_index)?;
        let sentence = r
            .sentences
            .get(sentence_index)
            .ok_or_else(|| Error::input(format!("has {} sentences, not {}", r.sentences.len(), sentence_index + 1)))?;
        let photo = load_rgb(&r.image)?;
        let (width, height) = (photo.width() as usize, photo.height() as usize);
        let (image, letterbox) = preprocess(&photo, self.opts.input_size);
        let mask = r.mask.read(width, height)?;
        let mask_resized = (mask.width, mask.height) != (width, height);
        let grey = if mask_resized {
            self.resized.lock().unwrap_or_else(|e| e.into_inner()).insert(ref_index, r.segment_id.clone());
            resize_nearest(&mask.grey, mask.width, mask.height, width, height)
        } else {
            mask.grey
        };
        let tokens = ClipTokenizer::global().tokenize(sentence, self.opts.word_len)?;
        let (target, eval) = match self.mode {
            Mode::Train => {
                (Some(warp_mask(&grey, width, height, &letterbox).map_err(|e| e.in_file(r.mask.describe()))?), None)
            }
            Mode::Val | Mode::Test => {
                (None, Some(EvalTarget { mask: grey.iter().map(|&v| u8::from(v != 0)).collect(), mask_resized }))
            }
        };
        let item = BatchItem {
            ref_index,
            sentence_index,
            segment_id: r.segment_id.clone(),
            image: r.image.clone(),
            origin: r.origin.clone(),
            sentence: sentence.clone(),
            truncated: tokens.truncated,
            width,
            height,
            letterbox,
            eval,
        };
        Ok(Sample { image, ids: tokens.ids, target, item })
    }

    fn assemble(&self, samples: Vec<std::result::Result<Sample, SampleError>>) -> Result<Batch> {
        let (s, l) = (self.opts.input_size, self.opts.word_len);
        let mut batch = Batch {
            len: samples.len(),
            input_size: s,
            word_len: l,
            images: Vec::with_capacity(samples.len() * 3 * s * s),
            word_ids: Vec::with_capacity(samples.len() * l),
            pad_mask: Vec::with_capacity(samples.len() * l),
            targets: (self.mode == Mode::Train).then(|| Vec::with_capacity(samples.len() * s * s)),
            items: Vec::with_capacity(samples.len()),
            skipped: Vec::new(),
        };
        for sample in samples {
            let sample = match (sample, self.bad_samples) {
                (Ok(sample), _) => sample,
                (Err(bad), BadSamples::Skip) => {
                    batch.skipped.push(bad);
                    continue;
                }
                (Err(bad), BadSamples::Stop) => return Err(Error::input(bad.to_string())),
            };
            batch.images.extend(sample.image);
            batch.pad_mask.extend(pad_mask(&sample.ids));
            batch.word_ids.extend(sample.ids);
            if let (Some(targets), Some(target)) = (batch.targets.as_mut(), sample.target) {
                targets.extend(target);
            }
            batch.items.push(sample.item);
        }
        batch.len = batch.items.len();
        Ok(batch)
    }
}

/// `cv2.resize(mask, (w, h), interpolation=INTER_NEAREST)`: source pixel
/// `floor(dst · src/dst)`, clamped.
pub fn resize_nearest(mask: &[u8], src_w: usize, src_h: usize, w: usize, h: usize) -> Vec<u8> {
    if src_w == 0 || src_h == 0 {
        return vec![0; w * h];
    }
    let (sx, sy) = (src_w as f64 / w as f64, src_h as f64 / h as f64);
    let mut out = Vec::with_capacity(w * h);
    for y in 0..h {
        let y0 = ((y as f64 * sy).floor() as usize).min(src_h - 1);
        for x in 0..w {
            let x0 = ((x as f64 * sx).floor() as usize).min(src_w - 1);
            out.push(mask[y0 * src_w + x0]);
        }
    }
    out
}

#[cfg(test)]
mod tests;
