//! Data sets as tensors, for training and evaluation alike: where the refs of a split come
//! from (the prepared layout or a manifest), and their loaders turned into tensors.

pub mod preflight;

use std::path::PathBuf;

use anyhow::{Context, Result};
use detris_io::data::holdout::split_by_photo;
use detris_io::data::loader::{self, BadSamples, Loader, LoaderOptions, Mode, RefSource, SampleError};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

use crate::config::DetrisConfig;
use crate::distributed::sampler::DistributedSampler;

/// Where a data set in the official prepared layout lies: `root/anns/<dataset>/<split>.json`,
/// `root/masks/<dataset>/`, `root/images/train2014/` (`detris data prepare` and `detris data
/// synth` write it). Any of its splits can be read from it ([`DataSource::split`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DataSource {
    pub root: PathBuf,
    pub dataset: String,
}

impl DataSource {
    pub fn new(root: impl Into<PathBuf>, dataset: impl Into<String>) -> DataSource {
        DataSource { root: root.into(), dataset: dataset.into() }
    }

    /// Split `split` of this data set.
    pub fn split(&self, split: impl Into<String>) -> SplitSource {
        SplitSource::Prepared { root: self.root.clone(), dataset: self.dataset.clone(), split: split.into() }
    }
}

/// Which side of a split by photo (`--val-fraction`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HeldOutSide {
    Train,
    Val,
}

/// The refs of one split, from either source: a split of the prepared layout, a whole
/// manifest, or one side of a manifest split by photo. Training, validation, evaluation and
/// the distributed sampler see only the [`RefSource`] it opens, so they work alike over all.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum SplitSource {
    Prepared {
        root: PathBuf,
        dataset: String,
        split: String,
    },
    /// The lines of a JSON Lines manifest that have a ground truth.
    Manifest {
        manifest: PathBuf,
    },
    /// One side of `manifest` split by photo ([`detris_io::data::holdout::split_by_photo`]):
    /// `val_fraction` of its photos, chosen by `seed`, validate.
    HeldOut {
        manifest: PathBuf,
        val_fraction: f64,
        seed: u64,
        side: HeldOutSide,
    },
}

impl SplitSource {
    pub fn manifest(path: impl Into<PathBuf>) -> SplitSource {
        SplitSource::Manifest { manifest: path.into() }
    }

    /// The refs (for a manifest: the offsets of its good lines; the refs are read when used).
    pub fn open(&self) -> Result<RefSource> {
        match self {
            SplitSource::Prepared { root, dataset, split } => RefSource::prepared(root, dataset, split)
                .with_context(|| format!("data set `{dataset}` split `{split}` under {}", root.display())),
            SplitSource::Manifest { manifest } => {
                RefSource::manifest(manifest).with_context(|| format!("manifest {}", manifest.display()))
            }
            SplitSource::HeldOut { manifest, val_fraction, seed, side } => {
                let whole =
                    RefSource::manifest(manifest).with_context(|| format!("manifest {}", manifest.display()))?;
                let held = split_by_photo(&whole, *val_fraction, *seed)?;
                Ok(match side {
                    HeldOutSide::Train => held.train,
                    HeldOutSide::Val => held.val,
                })
            }
        }
    }

    /// A loader over this split, for a model of `cfg`'s input size and word length.
    pub fn loader(&self, read: &SplitRead, cfg: &DetrisConfig) -> Result<Loader> {
        let mut refs = self.open()?;
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
        Ok(Loader::open(refs, read.mode, opts)?)
    }

    /// A short name for tables and logs: the prepared split, the manifest's file stem, or
    /// `train`/`val` for the sides of a split by photo.
    pub fn label(&self) -> String {
        match self {
            SplitSource::Prepared { split, .. } => split.clone(),
            SplitSource::Manifest { manifest } => {
                manifest.file_stem().map_or_else(|| manifest.display().to_string(), |s| s.to_string_lossy().into())
            }
            SplitSource::HeldOut { side: HeldOutSide::Train, .. } => "train".into(),
            SplitSource::HeldOut { side: HeldOutSide::Val, .. } => "val".into(),
        }
    }

    /// The data set's name in reports: the prepared data set, or `manifest`.
    pub fn dataset(&self) -> String {
        match self {
            SplitSource::Prepared { dataset, .. } => dataset.clone(),
            SplitSource::Manifest { .. } | SplitSource::HeldOut { .. } => "manifest".into(),
        }
    }

    /// Where the refs are, for messages.
    pub fn describe(&self) -> String {
        match self {
            SplitSource::Prepared { root, dataset, split } => format!("{}/{dataset} ({split})", root.display()),
            SplitSource::Manifest { manifest } => manifest.display().to_string(),
            SplitSource::HeldOut { manifest, val_fraction, side, .. } => {
                let share = match side {
                    HeldOutSide::Train => 1.0 - val_fraction,
                    HeldOutSide::Val => *val_fraction,
                };
                format!("{} ({:?} side: {:.0}% of its photos)", manifest.display(), side, 100.0 * share)
            }
        }
    }

    /// The file that lists the refs (the prepared split's JSON, or the manifest): the ranks of a
    /// data-parallel run check that they read the same.
    pub fn list_file(&self) -> PathBuf {
        match self {
            SplitSource::Prepared { root, dataset, split } => {
                root.join("anns").join(dataset).join(format!("{split}.json"))
            }
            SplitSource::Manifest { manifest } | SplitSource::HeldOut { manifest, .. } => manifest.clone(),
        }
    }
}

/// How one split is read.
#[derive(Clone, Debug)]
pub struct SplitRead {
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

/// What a training run reads: the split it trains on and the split that chooses `best`.
///
/// In a run's options (stored in its checkpoints and compared on `--resume`) two splits of
/// one prepared data set keep the flat form written before manifests existed
/// (`{"root", "dataset", "train_split", "val_split"}`), so older checkpoints still resume;
/// other sources are written as `{"train": {...}, "val": {...}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(from = "DataSpecJson", into = "DataSpecJson")]
pub struct DataSpec {
    pub train: SplitSource,
    /// The split that chooses `best` (val; the official RefCOCO+ configs use testB).
    pub val: SplitSource,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum DataSpecJson {
    Prepared { root: PathBuf, dataset: String, train_split: String, val_split: String },
    Sources { train: SplitSource, val: SplitSource },
}

impl From<DataSpecJson> for DataSpec {
    fn from(json: DataSpecJson) -> DataSpec {
        match json {
            DataSpecJson::Prepared { root, dataset, train_split, val_split } => {
                DataSpec::prepared(&DataSource { root, dataset }, train_split, val_split)
            }
            DataSpecJson::Sources { train, val } => DataSpec { train, val },
        }
    }
}

impl From<DataSpec> for DataSpecJson {
    fn from(spec: DataSpec) -> DataSpecJson {
        match (spec.train, spec.val) {
            (
                SplitSource::Prepared { root, dataset, split: train_split },
                SplitSource::Prepared { root: val_root, dataset: val_dataset, split: val_split },
            ) if root == val_root && dataset == val_dataset => {
                DataSpecJson::Prepared { root, dataset, train_split, val_split }
            }
            (train, val) => DataSpecJson::Sources { train, val },
        }
    }
}

impl DataSpec {
    /// Two splits of one prepared data set.
    pub fn prepared(data: &DataSource, train_split: impl Into<String>, val_split: impl Into<String>) -> DataSpec {
        DataSpec { train: data.split(train_split), val: data.split(val_split) }
    }

    pub fn describe(&self) -> String {
        self.train.describe()
    }

    /// The validation split's short name ([`SplitSource::label`]).
    pub fn val_label(&self) -> String {
        self.val.label()
    }

    /// The files listing the training and validation refs.
    pub fn list_files(&self) -> Vec<PathBuf> {
        vec![self.train.list_file(), self.val.list_file()]
    }

    /// The training split as [`TrainData`] reads it.
    fn train_read(&self, batch_size: usize, seed: u64, workers: usize) -> SplitRead {
        SplitRead { mode: Mode::Train, batch_size, workers, seed, limit: None }
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
            let loader = spec.train.loader(&spec.train_read(batch, seed, workers), cfg)?;
            return Ok(TrainData { loader: loader.with_bad_samples(BadSamples::Skip), shard: None, local: batch });
        };
        if batch % g.world != 0 {
            anyhow::bail!("--batch-size {batch} (the global batch) does not divide over WORLD_SIZE={} ranks", g.world);
        }
        let local = batch / g.world;
        let loader = spec.train.loader(&spec.train_read(local, seed, workers), cfg)?.with_bad_samples(BadSamples::Skip);
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
        let spec = DataSpec::prepared(&DataSource::new("data", "refcoco"), "train", "testB");
        let json =
            serde_json::json!({"root": "data", "dataset": "refcoco", "train_split": "train", "val_split": "testB"});
        assert_eq!(serde_json::to_value(&spec).unwrap(), json);
        assert_eq!(serde_json::from_value::<DataSpec>(json).unwrap(), spec);
    }

    #[test]
    fn old_flat_run_options_deserialize_and_compare_equal_as_resume_compares_them() {
        // As written by checkpoints before manifests: resume compares the re-serialised values.
        let old =
            serde_json::json!({"root": "runs/../data", "dataset": "synth", "train_split": "train", "val_split": "val"});
        let read: DataSpec = serde_json::from_value(old.clone()).unwrap();
        let now = DataSpec::prepared(&DataSource::new("runs/../data", "synth"), "train", "val");
        assert_eq!(read, now);
        assert_eq!(serde_json::to_value(&read).unwrap(), serde_json::to_value(&now).unwrap());
        assert_eq!(serde_json::to_value(&read).unwrap(), old);
    }

    #[test]
    fn manifest_specs_round_trip_through_json() {
        let held = |side| SplitSource::HeldOut { manifest: "m.jsonl".into(), val_fraction: 0.1, seed: 7, side };
        for spec in [
            DataSpec { train: held(HeldOutSide::Train), val: held(HeldOutSide::Val) },
            DataSpec { train: SplitSource::manifest("a.jsonl"), val: SplitSource::manifest("b.jsonl") },
            DataSpec { train: SplitSource::manifest("a.jsonl"), val: DataSource::new("data", "refcoco").split("val") },
        ] {
            let json = serde_json::to_value(&spec).unwrap();
            assert!(json.get("train").is_some(), "{json}");
            assert_eq!(serde_json::from_value::<DataSpec>(json).unwrap(), spec);
        }
        let json = serde_json::to_value(SplitSource::manifest("a.jsonl")).unwrap();
        assert_eq!(json, serde_json::json!({"source": "manifest", "manifest": "a.jsonl"}));
    }

    #[test]
    fn labels_name_the_split_or_the_manifest() {
        assert_eq!(DataSource::new("d", "refcoco").split("testA").label(), "testA");
        assert_eq!(SplitSource::manifest("x/test.jsonl").label(), "test");
        let val =
            SplitSource::HeldOut { manifest: "m.jsonl".into(), val_fraction: 0.25, seed: 0, side: HeldOutSide::Val };
        assert_eq!(val.label(), "val");
        assert_eq!(val.list_file(), PathBuf::from("m.jsonl"));
        assert_eq!(DataSource::new("d", "refcoco").split("val").list_file(), PathBuf::from("d/anns/refcoco/val.json"));
    }
}
