//! DenseAligner: the visual adapter in DINOv2 blocks. Dense
//! multi-scale 2-D convolutions over the patch grid, then cross-attention from
//! the patches to the words. Keys under `dinov2.blocks.{i}.adapter.`.

use tch::nn::Path;
use tch::Tensor;

use super::layers::{Ctx, Init0, Linear, MultiheadAttention};
use super::text_adapter::DenseBranches;
use crate::config::DetrisConfig;

/// `cross.*`: image_proj a→128, text_proj W→128, 8-head MHA (dropout 0.1,
/// no key padding mask: padding words are attended), back_proj 128→a.
#[derive(Debug)]
pub struct CrossModalAttention {
    pub image_proj: Linear,
    pub text_proj: Linear,
    pub attn: MultiheadAttention,
    pub back_proj: Linear,
}

#[derive(Debug)]
pub struct DenseAligner {
    pub fc1: Linear,
    pub fc2: Linear,
    pub dense: DenseBranches,
    pub cross: CrossModalAttention,
    /// CLS + registers: the tokens that skip the convolutions.
    pub prefix: i64,
}

impl DenseAligner {
    pub fn new(p: &Path, c: &DetrisConfig) -> DenseAligner {
        let (d, a, e) = (c.dino_dim as i64, c.visual_adapter_dim as i64, c.cross_dim as i64);
        let cross = p / "cross";
        // Linear layers get DINOv2's trunc-normal init (it runs over the whole
        // ViT after the adapters are built); convs keep kaiming_normal.
        let attn = MultiheadAttention::new(&(&cross / "multihead_attn"), e, c.cross_heads as i64, c.dropout, false);
        tch::no_grad(|| {
            let _ = attn.out_proj.weight.shallow_clone().normal_(0.0, 0.02);
        });
        DenseAligner {
            fc1: Linear::new(&(p / "D_fc1"), d, a, Init0::TruncNormal02),
            fc2: Linear::new(&(p / "D_fc2"), a, d, Init0::TruncNormal02),
            dense: DenseBranches::new(p, a, true, c.adapter_bn_eps, Init0::KaimingNormal),
            cross: CrossModalAttention {
                image_proj: Linear::new(&(&cross / "image_proj"), a, e, Init0::TruncNormal02),
                text_proj: Linear::new(&(&cross / "text_proj"), c.txt_width as i64, e, Init0::TruncNormal02),
                attn,
                back_proj: Linear::new(&(&cross / "back_proj"), e, a, Init0::TruncNormal02),
            },
            prefix: 1 + c.register_tokens as i64,
        }
    }

    /// h (B,T,D) = norm2(x), words (B,L,W) → (B,T,D), before the 0.2 scale.
    pub fn forward(&self, h: &Tensor, words: &Tensor, grid: i64, name: &str, ctx: &Ctx) -> Tensor {
        let x0 = self.fc1.forward(h).relu(); // (B,T,a)
        let (b, t, a) = x0.size3().unwrap();
        let n = t - self.prefix;
        let xs = x0.narrow(1, self.prefix, n).reshape([b, grid, grid, a]).permute([0, 3, 1, 2]);
        let o = self.dense.forward(&xs, ctx) + &xs; // (B,a,g,g), inner residual
        let o = o.reshape([b, a, n]).transpose(1, 2); // (B,N,a)
        let q = self.cross.image_proj.forward(&o);
        let kv = self.cross.text_proj.forward(words);
        let y = self.cross.back_proj.forward(&self.cross.attn.forward(&q, &kv, &kv, None, ctx));
        ctx.record(&format!("{name}.cross"), &y);
        // Prefix tokens → 2·x0 (x0 concatenated, then x0 added): kept as trained.
        let o = Tensor::cat(&[x0.narrow(1, 0, self.prefix), y], 1) + &x0;
        self.fc2.forward(&o)
    }
}
