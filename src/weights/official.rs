//! The names of foreign checkpoints in one place: the official checkpoint's
//! `module.` prefix, the pretrained backbones' names mapped into the model's
//! schema, and the official variant told from a state dict's shapes.
//! Everything past this file speaks the model's own names (the module tree,
//! see `docs/architecture.md`); the official names of a config's fields are
//! read in [`super::config_files`].

use std::path::Path;

use anyhow::{bail, Context, Result};
use detris_io::tensor::{DType, TensorMap};

use crate::config::DetrisConfig;

/// A DDP-wrapped model's state-dict keys start with this (the official
/// `train.py` saves `model.module` wrapped, so every key has it).
pub const DDP_PREFIX: &str = "module.";

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
