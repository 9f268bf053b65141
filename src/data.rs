//! Data sets as tensors, for training and evaluation alike: prepared-layout
//! loaders turned into tensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use detris_io::data::loader::{self, Loader, LoaderOptions, Mode};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::DetrisConfig;
use crate::distributed::sampler::DistributedSampler;

/// Which data: `root/anns/<dataset>/<split>.json`, `root/masks/<dataset>/`,
/// `root/images/train2014/` (the official prepared layout; `detris data
/// prepare` and `detris data synth` write it).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSpec {
    pub root: PathBuf,
    pub dataset: String,
    pub train_split: String,
    /// The split that chooses `best` (val; the official RefCOCO+ configs use testB).
    pub val_split: String,
}

impl DataSpec {
    pub fn describe(&self) -> String {
        format!("{}/{} ({})", self.root.display(), self.dataset, self.train_split)
    }
}

/// A training batch on the device: img (B,3,S,S), ids (B,L), target (B,1,S,S).
pub struct Batch {
    pub img: Tensor,
    pub ids: Tensor,
    pub target: Tensor,
}

impl Batch {
    pub fn to_device(&self, d: Device) -> Batch {
        Batch { img: self.img.to_device(d), ids: self.ids.to_device(d), target: self.target.to_device(d) }
    }
}

/// Tensors of a loader batch: images (B,3,S,S), ids (B,L).
pub fn batch_tensors(b: &loader::Batch) -> (Tensor, Tensor) {
    let (n, s, l) = (b.len as i64, b.input_size as i64, b.word_len as i64);
    (Tensor::from_slice(&b.images).view([n, 3, s, s]), Tensor::from_slice(&b.word_ids).view([n, l]))
}

/// A loader over one split; `limit` > 0 keeps only the first refs.
pub fn open_loader(
    spec: &DataSpec,
    split: &str,
    mode: Mode,
    cfg: &DetrisConfig,
    batch: usize,
    seed: u64,
    workers: usize,
    limit: usize,
) -> Result<Loader> {
    let mut refs = loader::prepared_refs(&spec.root, &spec.dataset, split)
        .with_context(|| format!("data set `{}` split `{split}` under {}", spec.dataset, spec.root.display()))?;
    if limit > 0 {
        refs.truncate(limit);
    }
    let opts = LoaderOptions {
        input_size: cfg.input_size,
        word_len: cfg.word_len,
        batch_size: batch,
        workers: workers.max(1),
        prefetch: 2,
        seed,
    };
    Ok(Loader::new(refs, mode, opts)?)
}

pub struct TrainData {
    loader: Loader,
    /// Data-parallel runs: this rank's DistributedSampler and its share of
    /// the global batch.
    shard: Option<(DistributedSampler, usize)>,
}

impl TrainData {
    /// `batch` is the global batch; in a data-parallel run each rank loads
    /// batch / world of it.
    pub fn open(spec: &DataSpec, cfg: &DetrisConfig, seed: u64, workers: usize, batch: usize) -> Result<TrainData> {
        let Some(g) = crate::distributed::world() else {
            return Ok(TrainData {
                loader: open_loader(spec, &spec.train_split, Mode::Train, cfg, batch, seed, workers, 0)?,
                shard: None,
            });
        };
        if batch % g.world != 0 {
            anyhow::bail!("--batch-size {batch} (the global batch) does not divide over WORLD_SIZE={} ranks", g.world);
        }
        let local = batch / g.world;
        let loader = open_loader(spec, &spec.train_split, Mode::Train, cfg, local, seed, workers, 0)?;
        let sampler = DistributedSampler {
            len: loader.refs().len(),
            world: g.world,
            rank: g.rank,
            shuffle: true,
            seed,
            drop_last: false,
        };
        Ok(TrainData { loader, shard: Some((sampler, local)) })
    }

    pub fn len(&self) -> usize {
        self.loader.refs().len()
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
                let sentences: Vec<usize> = self.loader.refs().iter().map(|r| r.sentences.len()).collect();
                crate::distributed::sampler::train_plan(sampler, &sentences, *local, epoch as u64)
            }
            None => self.loader.plan(epoch as u64),
        }
    }

    /// The batches of `epoch` from batch `skip` on (a resumed epoch). The
    /// order is a pure function of (seed, epoch), so skipping by counting
    /// reproduces the uninterrupted run.
    pub fn epoch(&self, epoch: usize, skip: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.loader.run_plan(self.plan(epoch)).skip(skip).map(|b| {
            let b = b?;
            let (img, ids) = batch_tensors(&b);
            let s = b.input_size as i64;
            let targets = b.targets.as_ref().context("the training loader gave no targets")?;
            let target = Tensor::from_slice(targets).view([b.len as i64, 1, s, s]);
            Ok(Batch { img, ids, target })
        })
    }
}
