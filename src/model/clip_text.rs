//! The frozen CLIP text transformer with TextAdapters.
//! Keys under `txt_backbone.`; all 12 (W-wide) layers run before any vision.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::layers::{frozen_zeros, quick_gelu, AttnMask, Ctx, Init0, LayerNorm, Linear, MultiheadAttention};
use super::text_adapter::TextAdapter;
use crate::config::DetrisConfig;

#[derive(Debug)]
pub struct ResidualBlock {
    pub attn: MultiheadAttention,
    pub ln_1: LayerNorm,
    pub ln_2: LayerNorm,
    pub c_fc: Linear,
    pub c_proj: Linear,
    pub adapter: Option<TextAdapter>,
}

#[derive(Debug)]
pub struct ClipText {
    pub token_embedding: Tensor,
    pub positional_embedding: Tensor,
    pub text_projection: Tensor,
    pub logit_scale: Tensor,
    pub blocks: Vec<ResidualBlock>,
    pub ln_final: LayerNorm,
    pub adapter_scale: f64,
}

/// The text encoder's two outputs.
pub struct TextFeatures {
    /// F_t (B,L,W): word features after `ln_final`.
    pub words: Tensor,
    /// F_s (B,E): the EOT token's feature through `text_projection`.
    pub sentence: Tensor,
}

impl ClipText {
    pub fn new(p: &Path, c: &DetrisConfig) -> ClipText {
        let w = c.txt_width as i64;
        let res = p / "transformer" / "resblocks";
        let blocks = (0..c.txt_layers)
            .map(|i| {
                let b = &res / i;
                ResidualBlock {
                    attn: MultiheadAttention::new(&(&b / "attn"), w, c.txt_heads as i64, 0.0, true),
                    ln_1: LayerNorm::new(&(&b / "ln_1"), w, c.clip_ln_eps, true),
                    ln_2: LayerNorm::new(&(&b / "ln_2"), w, c.clip_ln_eps, true),
                    c_fc: Linear::new(&(&b / "mlp" / "c_fc"), w, 4 * w, Init0::Frozen),
                    c_proj: Linear::new(&(&b / "mlp" / "c_proj"), 4 * w, w, Init0::Frozen),
                    adapter: c
                        .txt_adapter_layers
                        .contains(&i)
                        .then(|| TextAdapter::new(&(&b / "adapter"), w, c.txt_adapter_dim as i64, c.adapter_bn_eps)),
                }
            })
            .collect();
        ClipText {
            token_embedding: frozen_zeros(&(p / "token_embedding"), "weight", &[c.vocab_size as i64, w]),
            positional_embedding: frozen_zeros(p, "positional_embedding", &[c.context_length as i64, w]),
            text_projection: frozen_zeros(p, "text_projection", &[w, c.embed_dim as i64]),
            logit_scale: frozen_zeros(p, "logit_scale", &[]),
            blocks,
            ln_final: LayerNorm::new(&(p / "ln_final"), w, c.clip_ln_eps, true),
            adapter_scale: c.adapter_scale,
        }
    }

    /// ids (B,L) int64 → F_t (B,L,W), F_s (B,E).
    pub fn forward(&self, ids: &Tensor, ctx: &Ctx) -> TextFeatures {
        let (b, l) = ids.size2().unwrap();
        let kind = self.token_embedding.kind();
        let mut x = self.token_embedding.embedding_sp(ids) + self.positional_embedding.narrow(0, 0, l);
        // Causal mask: -inf strictly above the diagonal (built for word_len).
        let causal = Tensor::full([l, l], f64::NEG_INFINITY, (kind, ids.device())).triu(1);
        let mask = AttnMask::Additive(causal);
        for (i, blk) in self.blocks.iter().enumerate() {
            let h = blk.ln_1.forward(&x);
            x = x + blk.attn.forward(&h, &h, &h, Some(&mask), ctx);
            let mlp = blk.c_proj.forward(&quick_gelu(&blk.c_fc.forward(&blk.ln_2.forward(&x))));
            x = match &blk.adapter {
                // The adapter sees the post-attention residual stream, not a normed one.
                Some(adapter) => {
                    let a = adapter.forward(&x, ctx);
                    ctx.record(&format!("txt.resblocks.{i}.adapter"), &a);
                    x + mlp + a * self.adapter_scale
                }
                None => x + mlp,
            };
            ctx.record(&format!("txt.resblocks.{i}"), &x.transpose(0, 1)); // official layout (L,B,W)
        }
        let words = self.ln_final.forward(&x);
        // argmax of the ids = the EOT position (49407 is the largest id).
        let eot = ids.argmax(-1, false);
        let w = words.size()[2];
        let sentence = words.gather(1, &eot.view([b, 1, 1]).expand([b, 1, w], false), false).squeeze_dim(1);
        let sentence = sentence.matmul(&self.text_projection);
        TextFeatures { words, sentence }
    }
}

trait EmbeddingExt {
    fn embedding_sp(&self, ids: &Tensor) -> Tensor;
}

impl EmbeddingExt for Tensor {
    /// Row lookup `self[ids]` (the embedding kernel, no sparse grads).
    fn embedding_sp(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(self, &ids.to_kind(Kind::Int64), -1, false, false)
    }
}
