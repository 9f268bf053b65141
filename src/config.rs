//! Every dimension and constant of a DETRIS model, and the official variants
//! as named constructors. Nothing in the model is a literal: the
//! text width W, text embed width E, DINOv2 width D and neck/decoder width C
//! are separate fields.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetrisConfig {
    /// Variant name (`detris-b`, `detris-l`, `detris-l-mixed`, or a custom name).
    pub name: String,
    /// Square input side in pixels, a multiple of `patch_size`.
    pub input_size: usize,
    /// Token sequence length L (17, or 22 for RefCOCOg-umd).
    pub word_len: usize,

    // CLIP text encoder.
    pub vocab_size: usize,
    pub context_length: usize,
    /// W: text transformer width.
    pub txt_width: usize,
    pub txt_layers: usize,
    pub txt_heads: usize,
    /// E: width of the sentence feature after `text_projection`.
    pub embed_dim: usize,
    pub txt_adapter_layers: Vec<usize>,
    pub txt_adapter_dim: usize,

    // DINOv2 with registers.
    /// D: DINOv2 width.
    pub dino_dim: usize,
    pub dino_depth: usize,
    pub dino_heads: usize,
    pub patch_size: usize,
    pub register_tokens: usize,
    /// Side of the pretrained position-embedding grid (37 for 518-px training).
    pub pos_grid: usize,
    pub interpolate_offset: f64,
    pub mlp_ratio: usize,
    pub dino_adapter_layers: Vec<usize>,
    pub visual_adapter_dim: usize,
    /// Blocks whose raw output is tapped (the final-norm tap is added).
    pub taps: Vec<usize>,
    /// DenseAligner cross-attention width and heads (128 and 8 in the official code).
    pub cross_dim: usize,
    pub cross_heads: usize,

    // Neck, decoder, projector.
    /// C: neck/decoder width (`vis_dim`); must equal W.
    pub vis_dim: usize,
    pub dec_layers: usize,
    pub dec_heads: usize,
    pub dec_ffn: usize,
    pub dropout: f64,
    pub proj_kernel: usize,

    // Constants of the official code.
    pub adapter_scale: f64,
    pub clip_ln_eps: f64,
    pub dino_ln_eps: f64,
    pub adapter_bn_eps: f64,
    pub neck_bn_eps: f64,
    pub sot: i64,
    pub eot: i64,
}

impl DetrisConfig {
    fn official_common(name: &str) -> DetrisConfig {
        DetrisConfig {
            name: name.to_string(),
            input_size: 448,
            word_len: 17,
            vocab_size: 49408,
            context_length: 77,
            txt_width: 512,
            txt_layers: 12,
            txt_heads: 8,
            embed_dim: 512,
            txt_adapter_layers: vec![1, 3, 5, 7, 9, 11],
            txt_adapter_dim: 64,
            dino_dim: 768,
            dino_depth: 12,
            dino_heads: 12,
            patch_size: 14,
            register_tokens: 4,
            pos_grid: 37,
            interpolate_offset: 0.1,
            mlp_ratio: 4,
            dino_adapter_layers: vec![1, 3, 5, 7, 9, 11],
            visual_adapter_dim: 128,
            taps: vec![4, 8],
            cross_dim: 128,
            cross_heads: 8,
            vis_dim: 512,
            dec_layers: 3,
            dec_heads: 8,
            dec_ffn: 512,
            dropout: 0.1,
            proj_kernel: 3,
            adapter_scale: 0.2,
            clip_ln_eps: 1e-5,
            dino_ln_eps: 1e-6,
            adapter_bn_eps: 1e-3,
            neck_bn_eps: 1e-5,
            sot: 49406,
            eot: 49407,
        }
    }

    /// DETRIS-B: DINOv2 ViT-B/14-reg4, adapters in odd blocks, taps [4, 8].
    pub fn detris_b() -> DetrisConfig {
        Self::official_common("detris-b")
    }

    /// DETRIS-L: DINOv2 ViT-L/14-reg4, adapters every 4th block from 2, taps [8, 16].
    pub fn detris_l() -> DetrisConfig {
        DetrisConfig {
            dino_dim: 1024,
            dino_depth: 24,
            dino_heads: 16,
            dino_adapter_layers: vec![2, 6, 10, 14, 18, 22],
            taps: vec![8, 16],
            ..Self::official_common("detris-l")
        }
    }

    /// DETRIS-L* (trained on the mixed RefCOCO/+/G set): adapters in every
    /// block from 1, adapter dims 384.
    pub fn detris_l_mixed() -> DetrisConfig {
        DetrisConfig {
            dino_adapter_layers: (1..24).collect(),
            visual_adapter_dim: 384,
            txt_adapter_layers: (1..12).collect(),
            txt_adapter_dim: 384,
            ..Self::detris_l()
        }
        .renamed("detris-l-mixed")
    }

    fn renamed(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    pub const VARIANTS: &'static [&'static str] = &["detris-b", "detris-l", "detris-l-mixed"];

    /// A named variant; accepts `detris-b`, `DETRIS-B`, `b`, `DETRIS-L*`, `l-mixed`, ...
    pub fn variant(name: &str) -> Result<DetrisConfig> {
        let key = name.trim().to_ascii_lowercase().replace('_', "-");
        let key = key.strip_prefix("detris-").unwrap_or(&key);
        Ok(match key {
            "b" | "base" => Self::detris_b(),
            "l" | "large" => Self::detris_l(),
            "l*" | "l-mixed" | "large-mixed" | "l-star" => Self::detris_l_mixed(),
            _ => bail!("unknown variant `{name}`: choose one of {}", Self::VARIANTS.join(", ")),
        })
    }

    /// Patch grid side g = input_size / patch_size.
    pub fn grid(&self) -> usize {
        self.input_size / self.patch_size
    }

    /// Tokens DINOv2 carries per image: the class token, the registers and g² patches.
    pub fn image_tokens(&self) -> usize {
        1 + self.register_tokens + self.grid() * self.grid()
    }

    /// Side of the logits: the projector upsamples the grid ×4.
    pub fn logit_size(&self) -> usize {
        self.grid() * 4
    }

    /// Checks the relations the architecture needs, with a message per rule.
    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        if self.patch_size == 0 || self.input_size % self.patch_size != 0 || self.input_size == 0 {
            errs.push(format!(
                "input_size {} must be a positive multiple of patch_size {}",
                self.input_size, self.patch_size
            ));
        }
        if self.word_len < 2 || self.word_len > self.context_length {
            errs.push(format!(
                "word_len {} must be within 2..={} (context_length)",
                self.word_len, self.context_length
            ));
        }
        if self.vis_dim != self.txt_width {
            errs.push(format!(
                "vis_dim (C={}) must equal the text width (W={}): the decoder attends to the word features without a projection",
                self.vis_dim, self.txt_width
            ));
        }
        for (what, dim, heads) in [
            ("txt_width", self.txt_width, self.txt_heads),
            ("dino_dim", self.dino_dim, self.dino_heads),
            ("cross_dim", self.cross_dim, self.cross_heads),
            ("vis_dim", self.vis_dim, self.dec_heads),
        ] {
            if heads == 0 || dim % heads != 0 {
                errs.push(format!("{what} {dim} is not divisible by its {heads} heads"));
            }
        }
        if self.vis_dim % 4 != 0 {
            errs.push(format!("vis_dim {} must be a multiple of 4 (2-D sine positions)", self.vis_dim));
        }
        for (what, a) in [("visual_adapter_dim", self.visual_adapter_dim), ("txt_adapter_dim", self.txt_adapter_dim)] {
            if a % 16 != 0 || a == 0 {
                errs.push(format!("{what} {a} must be a positive multiple of 16 (branches a/2, a/4, a/16)"));
            }
        }
        if let Some(l) = self.dino_adapter_layers.iter().find(|&&l| l >= self.dino_depth) {
            errs.push(format!("visual adapter layer {l} is beyond the {} DINOv2 blocks", self.dino_depth));
        }
        if let Some(l) = self.txt_adapter_layers.iter().find(|&&l| l >= self.txt_layers) {
            errs.push(format!("text adapter layer {l} is beyond the {} text layers", self.txt_layers));
        }
        if self.taps.len() != 2 || self.taps.iter().any(|&t| t >= self.dino_depth) {
            errs.push(format!("taps {:?} must name two DINOv2 blocks below {}", self.taps, self.dino_depth));
        }
        if self.grid() > self.pos_grid * 4 {
            errs.push(format!(
                "input_size {} is too large for the {}-grid position embedding",
                self.input_size, self.pos_grid
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid DETRIS config `{}`: {}", self.name, errs.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_variants_are_valid_and_differ_as_the_official_configs() {
        for v in DetrisConfig::VARIANTS {
            DetrisConfig::variant(v).unwrap().validate().unwrap();
        }
        let b = DetrisConfig::variant("DETRIS-B").unwrap();
        let l = DetrisConfig::variant("DETRIS-L").unwrap();
        let m = DetrisConfig::variant("DETRIS-L*").unwrap();
        assert_eq!((b.dino_dim, b.taps.clone()), (768, vec![4, 8]));
        assert_eq!((l.dino_dim, l.taps.clone()), (1024, vec![8, 16]));
        assert_eq!((m.dino_adapter_layers.len(), m.visual_adapter_dim, m.txt_adapter_layers.len()), (23, 384, 11));
        assert_eq!(b.logit_size(), 128);
    }

    #[test]
    fn unknown_variant_lists_the_valid_ones() {
        let e = DetrisConfig::variant("detris-xl").unwrap_err().to_string();
        assert!(e.contains("detris-xl") && e.contains("detris-l-mixed"), "{e}");
    }

    #[test]
    fn validation_names_the_broken_rule() {
        let mut c = DetrisConfig::detris_b();
        c.input_size = 450;
        c.vis_dim = 256;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("input_size 450") && e.contains("vis_dim (C=256)"), "{e}");
    }
}
