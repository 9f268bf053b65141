//! The one door to the weights: reads every kind of weight file users have
//! and builds the model from it, strictly.
//!
//! Sources: the official DETRIS `.pth` (all weights), a detris safetensors
//! file (config in its metadata), or the pretrained backbones `dinov2.pth` +
//! CLIP `ViT-B-16.pt` (+ trainable weights), or a training checkpoint that
//! holds the trained weights and names its base files (read first). Loading is strict: missing,
//! unexpected and wrong-shape keys are listed by name.
//!
//! The rooms, bottom up: [`convert`] (tch ⇄ plain tensors), [`strict`]
//! (name-by-name loading), [`official`] (the official layouts and every
//! foreign checkpoint name), [`config_files`] (the config files and the
//! official names of their fields), [`detris_file`] (detris's own file and
//! its checksum), [`base`] (the base files a fine-tuned checkpoint names
//! instead of holding its frozen weights),
//! [`export`] (vocabulary pruning, f16); this file orchestrates a load.

pub mod base;
pub mod config_files;
pub mod convert;
pub mod detris_file;
pub mod export;
pub mod official;
pub mod strict;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use detris_io::tensor::TensorMap;

use crate::config::DetrisConfig;
use crate::device::Precision;
use crate::model::Detris;

pub use config_files::read_config_file;
pub use convert::{from_tch, kind_of, to_tch};
pub use detris_file::{
    checksum, config_from_metadata, metadata_for, save_model, verify_checksum, FORMAT, META_CHECKSUM, META_CONFIG,
    META_FORMAT,
};
use export::TOKEN_EMBEDDING;
pub use export::{expand_vocab, export_model, prune_vocab, to_f16, Shrink, VOCAB_IDS};
pub use official::{backbone_map, detect_variant, shape_mismatch, DDP_PREFIX};
pub use strict::{load_map, state_dict, LoadReport};

/// Refuses weights holding NaN or infinity, naming the first tensors.
pub fn check_finite(path: &Path, map: &TensorMap) -> Result<()> {
    let bad: Vec<&str> = map
        .iter()
        .filter(|(_, t)| t.dtype.is_float() && t.to_f64_vec().iter().any(|v| !v.is_finite()))
        .map(|(k, _)| k.as_str())
        .take(5)
        .collect();
    if !bad.is_empty() {
        bail!("{}: weights contain NaN or infinity in {}", path.display(), bad.join(", "));
    }
    Ok(())
}

/// Where the weights come from.
#[derive(Clone, Debug, Default)]
pub struct WeightFiles {
    /// An official DETRIS `.pth` or a detris safetensors file (all weights,
    /// or only the trainable ones when the backbones are given too).
    pub checkpoint: Option<PathBuf>,
    /// Pretrained DINOv2 `.pth` (flat state dict).
    pub dinov2: Option<PathBuf>,
    /// OpenAI CLIP TorchScript archive (`ViT-B-16.pt`).
    pub clip: Option<PathBuf>,
}

impl WeightFiles {
    /// These files, or the model that ships with detris when they name none.
    pub fn or_shipped(self) -> Result<WeightFiles> {
        if self.checkpoint.is_none() && self.dinov2.is_none() && self.clip.is_none() {
            return Ok(WeightFiles { checkpoint: Some(crate::shipped::default_checkpoint()?), ..self });
        }
        Ok(self)
    }
}

/// How the config is chosen: `--config`, else `--variant`, else the file's
/// own metadata, else the variant its shapes name; then the overrides.
#[derive(Clone, Debug, Default)]
pub struct ConfigChoice {
    /// A config already built (e.g. from an official YAML file); wins over the rest.
    pub inline: Option<DetrisConfig>,
    pub config: Option<PathBuf>,
    pub variant: Option<String>,
    pub word_len: Option<usize>,
    pub input_size: Option<usize>,
}

impl ConfigChoice {
    /// The config: `inline`, else `config`, else `variant`, else what
    /// `otherwise` finds (the weights' metadata or shapes); then the word
    /// length and input size overrides; validated.
    pub fn resolve(&self, otherwise: impl FnOnce() -> Result<DetrisConfig>) -> Result<DetrisConfig> {
        let mut cfg = if let Some(c) = &self.inline {
            c.clone()
        } else if let Some(path) = &self.config {
            config_files::read_config_file(path)?
        } else if let Some(v) = &self.variant {
            DetrisConfig::variant(v)?
        } else {
            otherwise()?
        };
        if let Some(l) = self.word_len {
            cfg.word_len = l;
        }
        if let Some(s) = self.input_size {
            cfg.input_size = s;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Reads any supported weight file into plain tensors (the DDP `module.`
/// prefix removed) and metadata.
pub fn read_weights(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>)> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if detris_io::torch_file::FileKind::sniff(path)? == detris_io::torch_file::FileKind::Safetensors {
        let (map, meta) = detris_io::safetensors_file::read(path)?;
        verify_checksum(path, &map, &meta)?;
        Ok((official::strip_ddp_prefix(map, path)?, meta))
    } else {
        Ok((official::strip_ddp_prefix(detris_io::torch_file::load_state_dict(path)?, path)?, BTreeMap::new()))
    }
}

/// Builds a model from weight files (see [`WeightFiles`], [`ConfigChoice`]),
/// strictly: every variable must be filled, except the trainable ones when
/// starting from the pretrained backbones alone (they keep the official init).
pub fn load_model(files: &WeightFiles, choice: &ConfigChoice, device: tch::Device) -> Result<Detris> {
    load_model_in(files, choice, device, tch::Kind::Float)
}

/// The model as inference runs it: [`load_model_or_shipped`] in `precision`'s kind (`auto`
/// resolved for `device`), then, where the precision asks for it (bf16 and int8 on the CPU),
/// the frozen backbones' linear layers packed for oneDNN ([`crate::model::packing`]). What
/// `Segmenter::builder` and the commands load.
pub fn load_for_inference(
    files: &WeightFiles,
    choice: &ConfigChoice,
    device: tch::Device,
    precision: Precision,
) -> Result<Detris> {
    let precision = precision.for_inference(device)?;
    let kind = precision.kind().context("a resolved precision has a kind")?;
    let mut model = load_model_or_shipped(files, choice, device, kind)?;
    crate::model::packing::pack_for_inference(&mut model, precision)?;
    Ok(model)
}

/// As [`load_model_in`], but the model that ships with detris when `files` names no weights;
/// `kind` is `Float`, `BFloat16` or `Half`. Nothing is packed (see [`load_for_inference`]).
pub fn load_model_or_shipped(
    files: &WeightFiles,
    choice: &ConfigChoice,
    device: tch::Device,
    kind: tch::Kind,
) -> Result<Detris> {
    if !matches!(kind, tch::Kind::Float | tch::Kind::BFloat16 | tch::Kind::Half) {
        bail!("precision {kind:?}: use Float, BFloat16 or Half");
    }
    load_model_in(&files.clone().or_shipped()?, choice, device, kind)
}

/// The weights of a model gathered from its files, before any config is chosen.
struct Gathered {
    map: TensorMap,
    /// The checkpoint's metadata (its config), if a checkpoint was given.
    meta: BTreeMap<String, String>,
    /// A pruned vocabulary's token ids (the checkpoint's, else its base's).
    known_ids: Option<Vec<i64>>,
    /// The files, for messages.
    source: String,
}

/// Reads `files` into one map: the backbones, then the checkpoint over them.
/// A checkpoint that names a base (see [`base`]) and comes without backbones
/// has its base read first, at `depth + 1`.
fn gather(files: &WeightFiles, depth: usize) -> Result<Gathered> {
    let mut g = Gathered { map: TensorMap::new(), meta: BTreeMap::new(), known_ids: None, source: String::new() };
    let mut sources = Vec::new();
    if let (Some(d), Some(c)) = (&files.dinov2, &files.clip) {
        let dinov2 = read_weights(d)?.0;
        let clip = detris_io::torch_file::load_torchscript(c, true)?;
        g.map.extend(backbone_map(dinov2, clip));
        sources.push(format!("{} + {}", d.display(), c.display()));
    } else if files.dinov2.is_some() || files.clip.is_some() {
        bail!("the pretrained backbones come as a pair: give both --dinov2 and --clip");
    }
    if let Some(ck) = &files.checkpoint {
        let (mut m, md) = read_weights(ck)?;
        check_finite(ck, &m)?;
        let vocab = m.get(TOKEN_EMBEDDING).map(|_| 0).and(config_from_metadata(&md)?.map(|c| c.vocab_size));
        g.known_ids = expand_vocab(&mut m, vocab.unwrap_or(detris_io::tokenizer::VOCAB_SIZE))?;
        if let (Some(named), None) = (base::Base::from_metadata(&md, ck)?, &files.dinov2) {
            if depth >= base::MAX_DEPTH {
                bail!("{}: its bases name bases more than {} deep (a loop?)", ck.display(), base::MAX_DEPTH);
            }
            let mut under = gather(&named.checked_files(ck)?, depth + 1)?;
            under.map.retain(|k, _| !k.starts_with("adam."));
            g.map.extend(under.map);
            if !m.contains_key(TOKEN_EMBEDDING) {
                g.known_ids = under.known_ids;
            }
            sources.push(under.source);
        }
        g.map.extend(m);
        g.meta = md;
        sources.push(ck.display().to_string());
    }
    if sources.is_empty() {
        bail!("no weights given: pass --checkpoint (official .pth or detris .safetensors), or --dinov2 and --clip");
    }
    g.source = sources.join(" + ");
    Ok(g)
}

/// As [`load_model`], the weights converted to `kind` one tensor at a time as they load.
pub fn load_model_in(
    files: &WeightFiles,
    choice: &ConfigChoice,
    device: tch::Device,
    kind: tch::Kind,
) -> Result<Detris> {
    let Gathered { map, meta, known_ids, source } = gather(files, 0)?;

    let cfg = choice.resolve(|| match config_from_metadata(&meta)? {
        Some(c) => Ok(c),
        None => detect_variant(&map).with_context(|| source.clone()),
    })?;
    let mismatch = shape_mismatch(&cfg, &map);
    if !mismatch.is_empty() {
        let hint = detect_variant(&map).map(|v| format!(" (the shapes are those of {})", v.name)).unwrap_or_default();
        bail!("{source}: these weights do not fit config `{}`{hint}:\n  {}", cfg.name, mismatch.join("\n  "));
    }
    let mut model = Detris::new_in(cfg, device, kind)?;
    model.known_token_ids = known_ids;
    let mut report = load_map(&model, &map, true)?;
    if files.checkpoint.is_none() {
        // Backbones only: the trainable parts keep their official initialisation.
        let vars = model.vs.variables();
        report.missing.retain(|k| !(vars[k].requires_grad() || k.contains("running_")));
    }
    report.check(&source)?;
    Ok(model)
}
