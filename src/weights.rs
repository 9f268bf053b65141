//! The one place that maps foreign checkpoint layouts onto the model, and
//! writes detris's own files.
//!
//! Sources: the official DETRIS `.pth` (all weights, `module.` stripped by the
//! reader), a detris safetensors file (config in its metadata), or the
//! pretrained backbones `dinov2.pth` + CLIP `ViT-B-16.pt` (+ trainable
//! weights). Loading is strict: missing, unexpected and wrong-shape keys are
//! listed by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use detris_io::tensor::{Bytes, DType, RawTensor, TensorMap};
use tch::{Kind, Tensor};

use crate::config::DetrisConfig;
use crate::model::Detris;

/// Metadata keys of detris safetensors files.
pub const META_FORMAT: &str = "format";
pub const META_CONFIG: &str = "detris.config";
pub const META_CHECKSUM: &str = "detris.checksum";
pub const FORMAT: &str = "detris";

/// Keys a weight file may hold that the model does not need: BatchNorm
/// counters of the official state dict, optimizer moments of a detris
/// training checkpoint.
fn ignorable(name: &str) -> bool {
    name.ends_with("num_batches_tracked") || name.starts_with("adam.")
}

pub fn kind_of(dtype: DType) -> Result<Kind> {
    Ok(match dtype {
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    })
}

/// A plain tensor as a tch tensor on the CPU (one copy).
pub fn to_tch(t: &RawTensor) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(t.bytes(), &shape, kind_of(t.dtype)?)?)
}

/// A tch tensor as a plain tensor (f32, f64, f16, bf16, i64, u8 or bool).
pub fn from_tch(t: &Tensor) -> Result<RawTensor> {
    let dtype = match t.kind() {
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Int64 => DType::I64,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        k => bail!("cannot export a tensor of kind {k:?}"),
    };
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    RawTensor::new(dtype, t.size().iter().map(|&d| d as usize).collect(), Bytes::Owned(bytes))
        .context("tensor byte count mismatch")
}

/// What a strict load found; `check` turns problems into one error.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub loaded: usize,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
    /// name, expected shape, found shape
    pub wrong_shape: Vec<(String, Vec<i64>, Vec<usize>)>,
}

impl LoadReport {
    pub fn check(&self, source: &str) -> Result<()> {
        if self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty() {
            return Ok(());
        }
        let mut msg = format!("{source}: the weights do not fit this model");
        let list = |v: &[String]| {
            let head: Vec<&str> = v.iter().take(12).map(|s| s.as_str()).collect();
            let more = if v.len() > 12 { format!(" … and {} more", v.len() - 12) } else { String::new() };
            format!("{}{more}", head.join(", "))
        };
        if !self.wrong_shape.is_empty() {
            let shapes: Vec<String> =
                self.wrong_shape.iter().map(|(n, e, f)| format!("{n}: model {e:?}, file {f:?}")).collect();
            msg += &format!("\n  {} with the wrong shape: {}", shapes.len(), list(&shapes));
        }
        if !self.missing.is_empty() {
            msg += &format!("\n  {} missing: {}", self.missing.len(), list(&self.missing));
        }
        if !self.unexpected.is_empty() {
            msg += &format!("\n  {} unexpected: {}", self.unexpected.len(), list(&self.unexpected));
        }
        bail!(msg)
    }
}

/// Copies every tensor of `map` into the model's variable of the same name,
/// converting dtype and device. Names the model lacks, shapes that differ,
/// and (when `require_all`) variables the map lacks are reported.
pub fn load_map(model: &Detris, map: &TensorMap, require_all: bool) -> Result<LoadReport> {
    let vars = model.vs.variables();
    let mut report = LoadReport::default();
    let mut seen = BTreeSet::new();
    for (name, raw) in map {
        let Some(var) = vars.get(name) else {
            if !ignorable(name) {
                report.unexpected.push(name.clone());
            }
            continue;
        };
        seen.insert(name.as_str());
        let want = var.size();
        if want.len() != raw.shape.len() || want.iter().zip(&raw.shape).any(|(&a, &b)| a as usize != b) {
            report.wrong_shape.push((name.clone(), want, raw.shape.clone()));
            continue;
        }
        let src = to_tch(raw).with_context(|| format!("tensor `{name}`"))?;
        tch::no_grad(|| var.shallow_clone().copy_(&src.to_kind(var.kind())));
        report.loaded += 1;
    }
    if require_all {
        report.missing = vars.keys().filter(|k| !seen.contains(k.as_str())).cloned().collect();
        report.missing.sort();
    }
    report.unexpected.sort();
    Ok(report)
}

/// Every variable of the model by name (trainable only, if asked), as plain tensors.
pub fn state_dict(model: &Detris, trainable_only: bool) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, t) in model.vs.variables() {
        let keep = !trainable_only || t.requires_grad() || name.contains("running_");
        if keep {
            out.insert(name, from_tch(&t.detach())?);
        }
    }
    Ok(out)
}

/// The frozen DINOv2 (`dinov2.pth`, flat) and CLIP (`ViT-B-16.pt`) weights
/// renamed into the model's schema. The CLIP image tower and the extra
/// TorchScript entries are dropped.
pub fn backbone_map(dinov2: TensorMap, clip: TensorMap) -> TensorMap {
    let mut out = TensorMap::new();
    for (k, v) in dinov2 {
        out.insert(format!("dinov2.{k}"), v);
    }
    for (k, v) in clip {
        let image_tower = k.starts_with("visual.");
        // Real OpenAI files also carry these scalars, and each text block's
        // causal `attn_mask` as a plain (non-state-dict) attribute.
        let extra =
            matches!(k.as_str(), "input_resolution" | "context_length" | "vocab_size") || k.ends_with("attn_mask");
        if !image_tower && !extra {
            out.insert(format!("txt_backbone.{k}"), v.to_dtype(DType::F32));
        }
    }
    out
}

/// Picks the official variant whose shapes the state dict has (B, L, L*).
/// Shapes cannot tell word length, taps or input size; those come from the
/// variant itself or the caller's overrides.
pub fn detect_variant(map: &TensorMap) -> Result<DetrisConfig> {
    let d = map
        .get("dinov2.pos_embed")
        .map(|t| *t.shape.last().unwrap_or(&0))
        .context("cannot tell the variant: the weights have no `dinov2.pos_embed`")?;
    let adapter_dim = map.get("dinov2.blocks.1.adapter.D_fc1.weight").map(|t| t.shape[0]);
    match (d, adapter_dim) {
        (768, _) => Ok(DetrisConfig::detris_b()),
        (1024, Some(384)) => Ok(DetrisConfig::detris_l_mixed()),
        (1024, _) => Ok(DetrisConfig::detris_l()),
        _ => bail!(
            "the weights have a DINOv2 width of {d}, which is no official variant (768 = DETRIS-B, 1024 = DETRIS-L); pass --config"
        ),
    }
}

/// Says which config fields disagree with the shapes of `map`, so that a
/// checkpoint of another variant is refused with the reason.
pub fn shape_mismatch(cfg: &DetrisConfig, map: &TensorMap) -> Vec<String> {
    let mut out = Vec::new();
    let dim = |k: &str, i: usize| map.get(k).and_then(|t| t.shape.get(i).copied());
    let mut want = |what: &str, expected: usize, key: &str, i: usize| {
        if let Some(found) = dim(key, i) {
            if found != expected {
                out.push(format!("{what}: config {expected}, weights {found} (`{key}`)"));
            }
        }
    };
    want("DINOv2 width D", cfg.dino_dim, "dinov2.pos_embed", 2);
    want("text width W", cfg.txt_width, "txt_backbone.positional_embedding", 1);
    want("text embed width E", cfg.embed_dim, "txt_backbone.text_projection", 1);
    want("neck width C", cfg.vis_dim, "neck.txt_proj.weight", 0);
    for &l in &cfg.dino_adapter_layers {
        want("visual adapter dim", cfg.visual_adapter_dim, &format!("dinov2.blocks.{l}.adapter.D_fc1.weight"), 0);
    }
    let depth = (0..).take_while(|i| map.contains_key(&format!("dinov2.blocks.{i}.norm1.weight"))).count();
    if depth > 0 && depth != cfg.dino_depth {
        out.push(format!("DINOv2 depth: config {}, weights {depth}", cfg.dino_depth));
    }
    let adapters: Vec<usize> =
        (0..depth).filter(|i| map.contains_key(&format!("dinov2.blocks.{i}.adapter.D_fc1.weight"))).collect();
    if depth > 0 && !adapters.is_empty() && adapters != cfg.dino_adapter_layers {
        out.push(format!("visual adapter layers: config {:?}, weights {adapters:?}", cfg.dino_adapter_layers));
    }
    out
}

/// A config from a detris safetensors file's metadata, if it has one.
pub fn config_from_metadata(meta: &BTreeMap<String, String>) -> Result<Option<DetrisConfig>> {
    match meta.get(META_CONFIG) {
        None => Ok(None),
        Some(json) => {
            Ok(Some(serde_json::from_str(json).context("the file's `detris.config` metadata is not a valid config")?))
        }
    }
}

/// FNV-1a over names, dtypes, shapes, bytes and the config: detects a file
/// whose tensors or config were changed after detris wrote it.
pub fn checksum(map: &TensorMap, config_json: &str) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    for (k, t) in map {
        eat(k.as_bytes());
        eat(t.dtype.name().as_bytes());
        for d in &t.shape {
            eat(&(*d as u64).to_le_bytes());
        }
        eat(t.bytes());
    }
    eat(config_json.as_bytes());
    format!("fnv1a64:{h:016x}")
}

/// Metadata for a detris safetensors file: format, full config, checksum.
pub fn metadata_for(map: &TensorMap, cfg: &DetrisConfig) -> Result<BTreeMap<String, String>> {
    let json = serde_json::to_string(cfg)?;
    let mut meta = BTreeMap::new();
    meta.insert(META_FORMAT.to_string(), FORMAT.to_string());
    meta.insert(META_CHECKSUM.to_string(), checksum(map, &json));
    meta.insert(META_CONFIG.to_string(), json);
    Ok(meta)
}

/// Refuses a detris file whose checksum does not match its content.
pub fn verify_checksum(path: &Path, map: &TensorMap, meta: &BTreeMap<String, String>) -> Result<()> {
    if let (Some(sum), Some(json)) = (meta.get(META_CHECKSUM), meta.get(META_CONFIG)) {
        let actual = checksum(map, json);
        if &actual != sum {
            bail!(
                "{}: checksum mismatch (file says {sum}, content gives {actual}): the file was changed or damaged",
                path.display()
            );
        }
    }
    Ok(())
}

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

/// True when the file starts like a safetensors file (u64 header length, `{`).
fn is_safetensors(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut f = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let n = f.read(&mut head).with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(n == 9 && head[8] == b'{' && u64::from_le_bytes(head[..8].try_into().unwrap()) > 1)
}

/// Reads any supported weight file into plain tensors and metadata.
pub fn read_weights(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>)> {
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    if is_safetensors(path)? {
        let (map, meta) = detris_io::safetensors_file::read(path)?;
        verify_checksum(path, &map, &meta)?;
        Ok((map, meta))
    } else {
        Ok((detris_io::torch_file::load_state_dict(path)?, BTreeMap::new()))
    }
}

/// Builds a model from weight files (see [`WeightFiles`], [`ConfigChoice`]),
/// strictly: every variable must be filled, except the trainable ones when
/// starting from the pretrained backbones alone (they keep the official init).
pub fn load_model(files: &WeightFiles, choice: &ConfigChoice, device: tch::Device) -> Result<Detris> {
    let mut map = TensorMap::new();
    let mut meta = BTreeMap::new();
    let mut sources = Vec::new();
    let mut known_ids = None;
    if let (Some(d), Some(c)) = (&files.dinov2, &files.clip) {
        let dinov2 = read_weights(d)?.0;
        let clip = detris_io::torch_file::load_torchscript(c, true)?;
        map.extend(backbone_map(dinov2, clip));
        sources.push(format!("{} + {}", d.display(), c.display()));
    } else if files.dinov2.is_some() || files.clip.is_some() {
        bail!("the pretrained backbones come as a pair: give both --dinov2 and --clip");
    }
    if let Some(ck) = &files.checkpoint {
        let (mut m, md) = read_weights(ck)?;
        check_finite(ck, &m)?;
        let vocab = m.get(TOKEN_EMBEDDING).map(|_| 0).and(config_from_metadata(&md)?.map(|c| c.vocab_size));
        known_ids = expand_vocab(&mut m, vocab.unwrap_or(detris_io::tokenizer::VOCAB_SIZE))?;
        map.extend(m);
        meta = md;
        sources.push(ck.display().to_string());
    }
    if sources.is_empty() {
        bail!("no weights given: pass --checkpoint (official .pth or detris .safetensors), or --dinov2 and --clip");
    }
    let source = sources.join(" + ");

    let mut cfg = if let Some(c) = &choice.inline {
        c.clone()
    } else if let Some(path) = &choice.config {
        DetrisConfig::from_json_file(path)?
    } else if let Some(v) = &choice.variant {
        DetrisConfig::variant(v)?
    } else if let Some(c) = config_from_metadata(&meta)? {
        c
    } else {
        detect_variant(&map).with_context(|| source.clone())?
    };
    if let Some(l) = choice.word_len {
        cfg.word_len = l;
    }
    if let Some(s) = choice.input_size {
        cfg.input_size = s;
    }
    cfg.validate()?;
    let mismatch = shape_mismatch(&cfg, &map);
    if !mismatch.is_empty() {
        let hint = detect_variant(&map).map(|v| format!(" (the shapes are those of {})", v.name)).unwrap_or_default();
        bail!("{source}: these weights do not fit config `{}`{hint}:\n  {}", cfg.name, mismatch.join("\n  "));
    }
    let mut model = Detris::new(cfg, device)?;
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

/// Writes a detris safetensors file (all weights, or only the trainable ones
/// and BatchNorm statistics) with the full config and a checksum in its
/// metadata, atomically.
pub fn save_model(model: &Detris, path: &Path, trainable_only: bool) -> Result<()> {
    let map = state_dict(model, trainable_only)?;
    let meta = metadata_for(&map, &model.config)?;
    detris_io::safetensors_file::write(path, &map, &meta)?;
    Ok(())
}

/// Gives the frozen backbones random values (a model trained from scratch,
/// like the shipped synthetic one): N(0, 0.02) weights, LayerNorm/LayerScale
/// at 1, biases 0, embeddings N(0, 0.02) (positions 0.01, as CLIP).
pub fn init_backbones_randomly(model: &Detris, seed: u64) {
    tch::manual_seed(seed as i64);
    // Name order: the variable map's own order differs between processes.
    let mut vars: Vec<(String, Tensor)> = model.vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, v) in vars {
            if v.requires_grad() || name.contains("running_") {
                continue;
            }
            let mut v = v.shallow_clone();
            let leaf = name.rsplit('.').next().unwrap_or("");
            let is_norm = name.contains("norm") || name.contains("ln_");
            if leaf == "gamma" || (is_norm && leaf == "weight") {
                let _ = v.fill_(1.0);
            } else if leaf == "bias" || leaf.ends_with("_bias") || name.ends_with("logit_scale") {
                let _ = v.zero_();
            } else if name.ends_with("positional_embedding") {
                let _ = v.normal_(0.0, 0.01);
            } else {
                let _ = v.normal_(0.0, 0.02);
            }
        }
    });
}

/// Name of the id list stored beside a pruned token embedding.
pub const VOCAB_IDS: &str = "detris.vocab_ids";
const TOKEN_EMBEDDING: &str = "txt_backbone.token_embedding.weight";

/// Keeps only the token-embedding rows of `ids` (sorted), storing the ids
/// beside them: a model trained on a small language ships without the other
/// 49k rows.
pub fn prune_vocab(map: &mut TensorMap, ids: &[i64]) -> Result<()> {
    let emb = map.get(TOKEN_EMBEDDING).context("no token embedding to prune")?;
    let full = to_tch(emb)?;
    let idx = Tensor::from_slice(ids);
    map.insert(TOKEN_EMBEDDING.into(), from_tch(&full.index_select(0, &idx))?);
    map.insert(VOCAB_IDS.into(), from_tch(&idx)?);
    Ok(())
}

/// Undoes [`prune_vocab`]: rows of ids the file does not hold are zero (a
/// word the model never saw). Returns the ids the model knows, if pruned.
pub fn expand_vocab(map: &mut TensorMap, vocab_size: usize) -> Result<Option<Vec<i64>>> {
    let Some(ids) = map.remove(VOCAB_IDS) else { return Ok(None) };
    let ids = ids.to_i64_vec();
    let emb = map.get(TOKEN_EMBEDDING).context("a vocabulary id list without a token embedding")?;
    if emb.shape.len() != 2 || emb.shape[0] != ids.len() || ids.iter().any(|&i| i < 0 || i as usize >= vocab_size) {
        bail!("the pruned vocabulary does not match its embedding ({} ids, embedding {:?})", ids.len(), emb.shape);
    }
    let rows = to_tch(emb)?;
    let full = Tensor::zeros([vocab_size as i64, rows.size()[1]], (rows.kind(), tch::Device::Cpu));
    let full = full.index_copy(0, &Tensor::from_slice(&ids), &rows);
    map.insert(TOKEN_EMBEDDING.into(), from_tch(&full)?);
    Ok(Some(ids))
}

/// Every float tensor stored as f16 (halves the shipped file; the model
/// widens on load).
pub fn to_f16(map: &mut TensorMap) {
    for t in map.values_mut() {
        if t.dtype == DType::F32 || t.dtype == DType::F64 {
            *t = t.to_dtype(DType::F16);
        }
    }
}
