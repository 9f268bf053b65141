//! Neck (ETRIS `HA` as modified by DETRIS): projects the three
//! DINOv2 taps to width C, gates each by the sentence, aggregates, and adds a
//! CoordConv refinement. Keys under `neck.`.

use tch::nn::Path;
use tch::Tensor;

use super::layers::{ConvBnRelu, Ctx, Init0, Linear, MultiheadAttention};
use crate::config::DetrisConfig;

#[derive(Debug)]
pub struct Neck {
    pub txt_proj: Linear,
    pub f3_proj: ConvBnRelu,
    pub f4_proj: ConvBnRelu,
    pub f5_proj: ConvBnRelu,
    /// `fusion{3,4,5}.multihead_attn`: attention of every pixel to one key.
    pub fusion: [MultiheadAttention; 3],
    pub aggr: ConvBnRelu,
    /// `coordconv.0.conv1` (C+2 → C, 3×3) and `coordconv.1` (C → C, 3×3).
    pub coord: [ConvBnRelu; 2],
}

impl Neck {
    pub fn new(p: &Path, c: &DetrisConfig) -> Neck {
        let (d, cw, e, eps) = (c.dino_dim as i64, c.vis_dim as i64, c.embed_dim as i64, c.neck_bn_eps);
        let mha = |name: &str| MultiheadAttention::new(&(p / name / "multihead_attn"), cw, 8, 0.0, false);
        Neck {
            // The official code writes Linear(512, C); 512 is E in every real model.
            txt_proj: Linear::new(&(p / "txt_proj"), e, cw, Init0::TorchDefault),
            f3_proj: ConvBnRelu::conv_layer(&(p / "f3_proj"), d, cw, 1, eps),
            f4_proj: ConvBnRelu::conv_layer(&(p / "f4_proj"), d, cw, 1, eps),
            f5_proj: ConvBnRelu::deconv_1x1(&(p / "f5_proj"), d, cw, eps),
            fusion: [mha("fusion3"), mha("fusion4"), mha("fusion5")],
            aggr: ConvBnRelu::conv_layer(&(p / "aggr"), 3 * cw, cw, 1, eps),
            coord: [
                ConvBnRelu::conv_layer(&(p / "coordconv" / "0" / "conv1"), cw + 2, cw, 3, eps),
                ConvBnRelu::conv_layer(&(p / "coordconv" / "1"), cw, cw, 3, eps),
            ],
        }
    }

    /// taps 3 × (B,D,g,g), sentence (B,E) → (B,C,g,g).
    pub fn forward(&self, v: &[Tensor; 3], sentence: &Tensor, ctx: &Ctx) -> Tensor {
        let t = self.txt_proj.forward(sentence); // (B,C)
        let projected =
            [self.f3_proj.forward(&v[0], ctx), self.f4_proj.forward(&v[1], ctx), self.f5_proj.forward(&v[2], ctx)];
        let fq: Vec<Tensor> =
            projected.iter().zip(&self.fusion).map(|(vi, attn)| vi * self.sentence_gate(attn, vi, &t, ctx)).collect();
        let fq = self.aggr.forward(&Tensor::cat(&fq, 1), ctx);
        let refined = self.coord[1].forward(&self.coord[0].forward(&with_coords(&fq), ctx), ctx);
        fq + refined
    }

    /// The cross-attention of each pixel (query) to the single sentence key,
    /// as a (B,C,1,1) or (B,C,g,g) multiplier. With one key the softmax is
    /// exactly 1, so the fast path computes `out_proj(W_v t + b_v)` once per
    /// sample; the plain path runs the full attention as the official code.
    fn sentence_gate(&self, attn: &MultiheadAttention, v: &Tensor, t: &Tensor, ctx: &Ctx) -> Tensor {
        let (b, cw, h, w) = v.size4().unwrap();
        if ctx.levers.single_key_neck {
            let vproj =
                t.linear(&attn.in_proj_weight.narrow(0, 2 * cw, cw), Some(&attn.in_proj_bias.narrow(0, 2 * cw, cw)));
            return attn.out_proj.forward(&vproj).view([b, cw, 1, 1]);
        }
        let q = v.flatten(2, -1).transpose(1, 2); // (B,HW,C)
        let kv = t.unsqueeze(1); // (B,1,C)
        attn.forward(&q, &kv, &kv, None, ctx).transpose(1, 2).reshape([b, cw, h, w])
    }
}

/// CoordConv input: cat[x, X, Y] with X = linspace(-1,1,W) along each row and
/// Y = linspace(-1,1,H) along each column.
fn with_coords(x: &Tensor) -> Tensor {
    let (b, _, h, w) = x.size4().unwrap();
    let opts = (x.kind(), x.device());
    let xs = Tensor::linspace(-1.0, 1.0, w, opts).view([1, 1, 1, w]).expand([b, 1, h, w], false);
    let ys = Tensor::linspace(-1.0, 1.0, h, opts).view([1, 1, h, 1]).expand([b, 1, h, w], false);
    Tensor::cat(&[x.shallow_clone(), xs, ys], 1)
}
