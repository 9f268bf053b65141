//! Data sets as tensors, for training and evaluation alike: prepared-layout
//! loaders turned into tensors.

use std::path::PathBuf;

use anyhow::{Context, Result};
use detris_io::data::loader::{self, Loader, LoaderOptions, Mode};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::DetrisConfig;

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
}

impl TrainData {
    pub fn open(spec: &DataSpec, cfg: &DetrisConfig, seed: u64, workers: usize, batch: usize) -> Result<TrainData> {
        Ok(TrainData { loader: open_loader(spec, &spec.train_split, Mode::Train, cfg, batch, seed, workers, 0)? })
    }

    pub fn len(&self) -> usize {
        self.loader.refs().len()
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.loader.plan(0).len()
    }

    /// The batches of `epoch` from batch `skip` on (a resumed epoch). The
    /// order is a pure function of (seed, epoch), so skipping by counting
    /// reproduces the uninterrupted run.
    pub fn epoch(&self, epoch: usize, skip: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.loader.epoch(epoch as u64).skip(skip).map(|b| {
            let b = b?;
            let (img, ids) = batch_tensors(&b);
            let s = b.input_size as i64;
            let targets = b.targets.as_ref().context("the training loader gave no targets")?;
            let target = Tensor::from_slice(targets).view([b.len as i64, 1, s, s]);
            Ok(Batch { img, ids, target })
        })
    }
}
