//! The config files, and the official names of a config's fields: detris's
//! own JSON, a fixture `config.json` (official parameter names), and the
//! flattened keys of an official YAML config.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::config::DetrisConfig;

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

    #[test]
    fn every_official_yaml_file_names_its_variant() {
        let root = detris_io::fixtures::path("official-configs");
        let mut seen = 0;
        for ds in std::fs::read_dir(&root).unwrap().map(|d| d.unwrap().path()).filter(|d| d.is_dir()) {
            for path in std::fs::read_dir(&ds).unwrap().map(|f| f.unwrap().path()) {
                let yaml: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                // Sections flattened, as `train::yaml_config` reads them.
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
}
