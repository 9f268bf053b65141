//! Data sets as tensors, for training and evaluation alike: prepared-layout
//! loaders turned into tensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use detris_io::data::loader::{self, BadSamples, Loader, LoaderOptions, Mode, SampleError};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::DetrisConfig;
use crate::distributed::sampler::DistributedSampler;

/// Where a data set lies: `root/anns/<dataset>/<split>.json`, `root/masks/<dataset>/`,
/// `root/images/train2014/` (the official prepared layout; `detris data prepare` and
/// `detris data synth` write it). Any of its splits can be read from it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSource {
    pub root: PathBuf,
    pub dataset: String,
}

impl DataSource {
    pub fn new(root: impl Into<PathBuf>, dataset: impl Into<String>) -> DataSource {
        DataSource { root: root.into(), dataset: dataset.into() }
    }

    /// A loader over one split of this data set, for a model of `cfg`'s input size and word length.
    pub fn loader(&self, read: &SplitRead, cfg: &DetrisConfig) -> Result<Loader> {
        let split = &read.split;
        let mut refs = loader::prepared_refs(&self.root, &self.dataset, split)
            .with_context(|| format!("data set `{}` split `{split}` under {}", self.dataset, self.root.display()))?;
        if let Some(limit) = read.limit {
            refs.truncate(limit);
        }
        let opts = LoaderOptions {
            input_size: cfg.input_size,
            word_len: cfg.word_len,
            batch_size: read.batch_size,
            workers: read.workers.max(1),
            prefetch: 2,
            seed: read.seed,
        };
        Ok(Loader::new(refs, read.mode, opts)?)
    }
}

/// How one split is read.
#[derive(Clone, Debug)]
pub struct SplitRead {
    pub split: String,
    /// Train: shuffled, with targets; Val: the first sentence of each ref; Test: every sentence.
    pub mode: Mode,
    /// Sentences per batch.
    pub batch_size: usize,
    /// Loader threads (at least one runs).
    pub workers: usize,
    /// The shuffling seed of training.
    pub seed: u64,
    /// Only the first this many refs (`None`: all).
    pub limit: Option<usize>,
}

/// What a training run reads: a data set, the split it trains on and the split that
/// chooses `best`. (Evaluation reads a [`DataSource`] and names its own splits.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSpec {
    /// Flattened: the options JSON keeps `root` and `dataset` beside the splits.
    #[serde(flatten)]
    pub source: DataSource,
    pub train_split: String,
    /// The split that chooses `best` (val; the official RefCOCO+ configs use testB).
    pub val_split: String,
}

impl DataSpec {
    pub fn describe(&self) -> String {
        format!("{}/{} ({})", self.source.root.display(), self.source.dataset, self.train_split)
    }

    /// The training split as [`TrainData`] reads it.
    fn train_read(&self, batch_size: usize, seed: u64, workers: usize) -> SplitRead {
        SplitRead { split: self.train_split.clone(), mode: Mode::Train, batch_size, workers, seed, limit: None }
    }
}

/// A training batch on the device: img (B,3,S,S), ids (B,L), target (B,1,S,S).
/// B is the planned batch less the samples that could not be read (`skipped`);
/// it may be 0.
pub struct Batch {
    pub img: Tensor,
    pub ids: Tensor,
    pub target: Tensor,
    pub len: usize,
    /// The planned samples left out, each naming its manifest line or prepared entry.
    pub skipped: Vec<SampleError>,
}

impl Batch {
    pub fn to_device(&self, d: Device) -> Batch {
        Batch {
            img: self.img.to_device(d),
            ids: self.ids.to_device(d),
            target: self.target.to_device(d),
            len: self.len,
            skipped: self.skipped.clone(),
        }
    }
}

/// Tensors of a loader batch: images (B,3,S,S), ids (B,L).
pub fn batch_tensors(b: &loader::Batch) -> (Tensor, Tensor) {
    let (n, s, l) = (b.len as i64, b.input_size as i64, b.word_len as i64);
    (Tensor::from_slice(&b.images).view([n, 3, s, s]), Tensor::from_slice(&b.word_ids).view([n, l]))
}

pub struct TrainData {
    loader: Loader,
    /// Data-parallel runs: this rank's DistributedSampler and its share of
    /// the global batch.
    shard: Option<(DistributedSampler, usize)>,
    /// This process's planned batch.
    local: usize,
}

impl TrainData {
    /// `batch` is the global batch; in a data-parallel run each rank loads
    /// batch / world of it. A sample that cannot be read is left out of its
    /// batch and named in [`Batch::skipped`].
    pub fn open(spec: &DataSpec, cfg: &DetrisConfig, seed: u64, workers: usize, batch: usize) -> Result<TrainData> {
        let Some(g) = crate::distributed::world() else {
            let loader = spec.source.loader(&spec.train_read(batch, seed, workers), cfg)?;
            return Ok(TrainData { loader: loader.with_bad_samples(BadSamples::Skip), shard: None, local: batch });
        };
        if batch % g.world != 0 {
            anyhow::bail!("--batch-size {batch} (the global batch) does not divide over WORLD_SIZE={} ranks", g.world);
        }
        let local = batch / g.world;
        let loader =
            spec.source.loader(&spec.train_read(local, seed, workers), cfg)?.with_bad_samples(BadSamples::Skip);
        let sampler = DistributedSampler {
            len: loader.len(),
            world: g.world,
            rank: g.rank,
            shuffle: true,
            seed,
            drop_last: false,
        };
        Ok(TrainData { loader, shard: Some((sampler, local)), local })
    }

    /// The planned batch of this process (the global batch / ranks).
    pub fn local_batch(&self) -> usize {
        self.local
    }

    pub fn len(&self) -> usize {
        self.loader.len()
    }

    pub fn batches_per_epoch(&self) -> usize {
        match &self.shard {
            Some((sampler, local)) => sampler.num_samples() / local,
            None => self.loader.plan(0).len(),
        }
    }

    fn plan(&self, epoch: usize) -> detris_io::data::loader::Plan {
        match &self.shard {
            Some((sampler, local)) => {
                let sentences = self.loader.source().sentence_counts();
                crate::distributed::sampler::train_plan(sampler, &sentences, *local, epoch as u64)
            }
            None => self.loader.plan(epoch as u64),
        }
    }

    /// The batches of `epoch` from batch `skip` on (a resumed epoch). The
    /// order is a pure function of (seed, epoch), so skipping by counting
    /// reproduces the uninterrupted run; the skipped batches are not decoded.
    pub fn epoch(&self, epoch: usize, skip: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.loader.run_plan_from(self.plan(epoch), skip).map(|b| {
            let b = b?;
            let (img, ids) = batch_tensors(&b);
            let s = b.input_size as i64;
            let targets = b.targets.as_ref().context("the training loader gave no targets")?;
            let target = Tensor::from_slice(targets).view([b.len as i64, 1, s, s]);
            Ok(Batch { img, ids, target, len: b.len, skipped: b.skipped })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_spec_keeps_its_flat_json_in_the_run_options() {
        let spec = DataSpec {
            source: DataSource::new("data", "refcoco"),
            train_split: "train".into(),
            val_split: "testB".into(),
        };
        let json =
            serde_json::json!({"root": "data", "dataset": "refcoco", "train_split": "train", "val_split": "testB"});
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);
        assert_eq!(serde_json::from_value::<DataSpec>(json).unwrap(), spec);
    }
}
