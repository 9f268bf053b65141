//! The official layouts, and every foreign name in one place: the official
//! checkpoint's `module.` prefix, the pretrained backbones' names mapped into
//! the model's schema, the official names of a config's fields (fixture
//! `config.json` parameters, official YAML keys), and the official variant
//! told from a state dict's shapes. Everything past this file speaks the
//! model's own names (the module tree, see `docs/architecture.md`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use detris_io::tensor::{DType, TensorMap};
use serde_json::Value;

use crate::config::DetrisConfig;

/// A DDP-wrapped model's state-dict keys start with this (the official
/// `train.py` saves `model.module` wrapped, so every key has it).
const DDP_PREFIX: &str = "module.";

/// Entries OpenAI's CLIP TorchScript files carry beside the weights; the
/// official loader deletes them.
const CLIP_EXTRAS: [&str; 3] = ["input_resolution", "context_length", "vocab_size"];

/// Removes a leading `module.` from every key that has one; refuses a file in
/// which two keys become one.
pub fn strip_ddp_prefix(tensors: TensorMap, path: &Path) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    for (name, tensor) in tensors {
        let stripped = name.strip_prefix(DDP_PREFIX).unwrap_or(&name).to_string();
        if out.insert(stripped.clone(), tensor).is_some() {
            bail!("{}: two tensors are named `{stripped}` once `{DDP_PREFIX}` is removed", path.display());
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
        let extra = CLIP_EXTRAS.contains(&k.as_str()) || k.ends_with("attn_mask");
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

/// A config file: detris's own JSON (the fields of [`DetrisConfig`]), or a
/// fixture `config.json`, whose `params` object uses the official names.
pub fn read_config_file(path: &Path) -> Result<DetrisConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read config", path.display()))?;
    let v: Value = serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?;
    let cfg = match v.get("params") {
        Some(p) => config_from_fixture_params(p),
        None => serde_json::from_value(v).map_err(anyhow::Error::from),
    }
    .with_context(|| format!("{}: not a detris config", path.display()))?;
    cfg.validate().with_context(|| format!("{}", path.display()))?;
    Ok(cfg)
}

/// The `params` object of a fixture's `config.json` (official naming).
pub fn config_from_fixture_params(p: &Value) -> Result<DetrisConfig> {
    let u = |k: &str| -> Result<usize> {
        p.get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .with_context(|| format!("config params: missing integer `{k}`"))
    };
    let f = |k: &str| -> Result<f64> {
        p.get(k).and_then(|v| v.as_f64()).with_context(|| format!("config params: missing number `{k}`"))
    };
    let list = |k: &str| -> Result<Vec<usize>> {
        p.get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect())
            .with_context(|| format!("config params: missing list `{k}`"))
    };
    Ok(DetrisConfig {
        name: "fixture".into(),
        input_size: u("img")?,
        word_len: u("word_len")?,
        vocab_size: u("vocab")?,
        context_length: u("context_length")?,
        txt_width: u("txt_width")?,
        txt_layers: u("txt_layers")?,
        txt_heads: u("txt_heads")?,
        embed_dim: u("embed_dim")?,
        txt_adapter_layers: list("txt_adapter_layer")?,
        txt_adapter_dim: u("txt_adapter_dim")?,
        dino_dim: u("dino_dim")?,
        dino_depth: u("dino_depth")?,
        dino_heads: u("dino_heads")?,
        patch_size: u("patch_size")?,
        register_tokens: u("register_tokens")?,
        pos_grid: u("pos_grid")?,
        interpolate_offset: f("interpolate_offset")?,
        mlp_ratio: u("mlp_ratio")?,
        dino_adapter_layers: list("dino_adapter_layer")?,
        visual_adapter_dim: u("visual_adapter_dim")?,
        taps: list("output_dinov2")?,
        cross_dim: u("cross_dim")?,
        cross_heads: u("cross_heads")?,
        vis_dim: u("vis_dim")?,
        dec_layers: u("dec_layers")?,
        dec_heads: u("dec_heads")?,
        dec_ffn: u("dec_ffn")?,
        dropout: 0.1,
        proj_kernel: u("proj_kernel")?,
        adapter_scale: f("adapter_scale")?,
        clip_ln_eps: f("clip_ln_eps")?,
        dino_ln_eps: f("dino_ln_eps")?,
        adapter_bn_eps: f("adapter_bn_eps")?,
        neck_bn_eps: f("neck_bn_eps")?,
        sot: u("sot")? as i64,
        eot: u("eot")? as i64,
    })
}

/// The model config that the flattened keys of an official YAML file
/// (`config/<dataset>/DETRIS_*.yaml`, sections merged) describe: the variant
/// its `dino_name` names, with its adapter layers and dims, taps, word length
/// and head sizes; named after the variant it equals but for the word length (`…-custom`
/// otherwise).
/// Not validated.
pub fn config_from_yaml_keys(keys: &BTreeMap<String, Value>) -> DetrisConfig {
    let get = |k: &str| keys.get(k).filter(|v| !v.is_null());
    let usize_of = |k: &str| get(k)?.as_u64().map(|v| v as usize);
    let list = |k: &str| -> Option<Vec<usize>> {
        get(k)?.as_array()?.iter().map(|v| v.as_u64().map(|v| v as usize)).collect()
    };
    let large = get("dino_name").and_then(Value::as_str) == Some("dinov2-large");
    let mut c = if large { DetrisConfig::detris_l() } else { DetrisConfig::detris_b() };
    // YAML key → field.
    for (key, field) in [
        ("visual_adapter_layer", &mut c.dino_adapter_layers),
        ("txtual_adapter_layer", &mut c.txt_adapter_layers),
        ("output_dinov2", &mut c.taps),
    ] {
        if let Some(v) = list(key) {
            *field = v;
        }
    }
    for (key, field) in [
        ("visual_adapter_dim", &mut c.visual_adapter_dim),
        ("txt_adapter_dim", &mut c.txt_adapter_dim),
        ("dino_layers", &mut c.dino_depth),
        ("word_len", &mut c.word_len),
        ("input_size", &mut c.input_size),
        ("vis_dim", &mut c.vis_dim),
        ("word_dim", &mut c.embed_dim),
        ("num_layers", &mut c.dec_layers),
        ("num_head", &mut c.dec_heads),
        ("dim_ffn", &mut c.dec_ffn),
    ] {
        if let Some(v) = usize_of(key) {
            *field = v;
        }
    }
    if let Some(v) = get("dropout").and_then(Value::as_f64) {
        c.dropout = v;
    }
    c.name = [DetrisConfig::detris_b(), DetrisConfig::detris_l(), DetrisConfig::detris_l_mixed()]
        .into_iter()
        .find(|v| DetrisConfig { name: c.name.clone(), word_len: c.word_len, ..v.clone() } == c)
        .map(|v| v.name)
        .unwrap_or_else(|| format!("{}-custom", c.name));
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use detris_io::tensor::{Bytes, RawTensor};

    fn scalar() -> RawTensor {
        RawTensor::new(DType::F32, vec![1], Bytes::Owned(vec![0; 4])).unwrap()
    }

    #[test]
    fn ddp_prefix_is_removed_and_a_collision_is_refused() {
        let map: TensorMap = [("module.a".to_string(), scalar()), ("b".to_string(), scalar())].into_iter().collect();
        let out = strip_ddp_prefix(map, Path::new("x.pth")).unwrap();
        assert_eq!(out.keys().collect::<Vec<_>>(), ["a", "b"]);
        let clash: TensorMap = [("module.a".to_string(), scalar()), ("a".to_string(), scalar())].into_iter().collect();
        let e = strip_ddp_prefix(clash, Path::new("x.pth")).unwrap_err().to_string();
        assert!(e.contains("x.pth") && e.contains("`a`"), "{e}");
    }

    #[test]
    fn every_official_yaml_file_names_its_variant() {
        let root = detris_io::fixtures::path("official-configs");
        let mut seen = 0;
        for ds in std::fs::read_dir(&root).unwrap().map(|d| d.unwrap().path()).filter(|d| d.is_dir()) {
            for path in std::fs::read_dir(&ds).unwrap().map(|f| f.unwrap().path()) {
                let yaml: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                // Sections flattened, as `train::official_yaml` reads them.
                let keys: BTreeMap<String, Value> =
                    yaml.as_object().unwrap().values().flat_map(|s| s.as_object().unwrap().clone()).collect();
                let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
                let got = config_from_yaml_keys(&keys);
                let mut want = match stem.as_str() {
                    "DETRIS_base" => DetrisConfig::detris_b(),
                    "DETRIS_large" => DetrisConfig::detris_l(),
                    "DETRIS_large_mixed" => DetrisConfig::detris_l_mixed(),
                    other => panic!("{}: unexpected file {other}", ds.display()),
                };
                want.word_len = keys["word_len"].as_u64().unwrap() as usize;
                assert_eq!(got, want, "{}", path.display());
                got.validate().unwrap();
                seen += 1;
            }
        }
        assert!(seen > 0, "no YAML files under {}", root.display());
    }

    #[test]
    fn clip_extras_and_image_tower_are_dropped() {
        let clip: TensorMap =
            ["visual.proj", "input_resolution", "transformer.resblocks.0.attn_mask", "ln_final.weight"]
                .iter()
                .map(|k| (k.to_string(), scalar()))
                .collect();
        let out = backbone_map(TensorMap::new(), clip);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["txt_backbone.ln_final.weight"]);
    }
}
