//! Vision-language transformer decoder (CRIS `TransformerDecoder`):
//! pixels self-attend, then attend to the words (padding masked). Keys under
//! `decoder.`.

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::layers::{AttnMask, Ctx, Init0, LayerNorm, Linear, MultiheadAttention};
use crate::config::DetrisConfig;

#[derive(Debug)]
pub struct DecoderLayer {
    pub self_attn: MultiheadAttention,
    pub multihead_attn: MultiheadAttention,
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub norm3: LayerNorm,
    pub self_attn_norm: LayerNorm,
    pub cross_attn_norm: LayerNorm,
    /// `ffn.0` Linear(C,F) → ReLU → Dropout → `ffn.3` LayerNorm(F) → `ffn.4` Linear(F,C).
    pub ffn0: Linear,
    pub ffn3: LayerNorm,
    pub ffn4: Linear,
    pub dropout: f64,
}

#[derive(Debug)]
pub struct Decoder {
    pub layers: Vec<DecoderLayer>,
    pub norm: LayerNorm,
}

const LN_EPS: f64 = 1e-5;

impl Decoder {
    pub fn new(p: &Path, c: &DetrisConfig) -> Decoder {
        let (cw, heads, ffn, dr) = (c.vis_dim as i64, c.dec_heads as i64, c.dec_ffn as i64, c.dropout);
        let layers = (0..c.dec_layers)
            .map(|i| {
                let l = p / "layers" / i;
                let ln = |n: &str, d: i64| LayerNorm::new(&(&l / n), d, LN_EPS, false);
                DecoderLayer {
                    self_attn: MultiheadAttention::new(&(&l / "self_attn"), cw, heads, dr, false),
                    multihead_attn: MultiheadAttention::new(&(&l / "multihead_attn"), cw, heads, dr, false),
                    norm1: ln("norm1", cw),
                    norm2: ln("norm2", cw),
                    norm3: ln("norm3", cw),
                    self_attn_norm: ln("self_attn_norm", cw),
                    cross_attn_norm: ln("cross_attn_norm", cw),
                    ffn0: Linear::new(&(&l / "ffn" / "0"), cw, ffn, Init0::TorchDefault),
                    ffn3: LayerNorm::new(&(&l / "ffn" / "3"), ffn, LN_EPS, false),
                    ffn4: Linear::new(&(&l / "ffn" / "4"), ffn, cw, Init0::TorchDefault),
                    dropout: dr,
                }
            })
            .collect();
        Decoder { layers, norm: LayerNorm::new(&(p / "norm"), cw, LN_EPS, false) }
    }

    /// vis (B,C,h,w), words (B,L,C), pad (B,L) bool (true = padding) → (B,C,h,w).
    pub fn forward(&self, vis: &Tensor, words: &Tensor, pad: &Tensor, ctx: &Ctx) -> Tensor {
        let (b, cw, h, w) = vis.size4().unwrap();
        let l = words.size()[1];
        let opts = (vis.kind(), vis.device());
        let vis_pos = pos2d(cw, h, w, opts); // (1,HW,C)
        let txt_pos = pos1d(cw, l, opts); // (1,L,C)
        let mut v = vis.reshape([b, cw, h * w]).transpose(1, 2); // (B,HW,C)
        let pad = AttnMask::KeyPadding(pad.shallow_clone());
        let key = words + &txt_pos;
        for layer in &self.layers {
            v = layer.forward(&v, words, &key, &vis_pos, &pad, ctx);
        }
        let out = self.norm.forward(&v).transpose(1, 2); // (B,C,HW)
        ctx.record("decoder", &out);
        out.reshape([b, cw, h, w])
    }
}

impl DecoderLayer {
    fn drop(&self, x: Tensor, ctx: &Ctx) -> Tensor {
        if ctx.train && self.dropout > 0.0 {
            x.dropout(self.dropout, true)
        } else {
            x
        }
    }

    fn forward(&self, v: &Tensor, words: &Tensor, key: &Tensor, vis_pos: &Tensor, pad: &AttnMask, ctx: &Ctx) -> Tensor {
        let v2 = self.norm1.forward(v);
        let qk = &v2 + vis_pos;
        let v2 = self.self_attn_norm.forward(&self.self_attn.forward(&qk, &qk, &v2, None, ctx));
        let v = v + self.drop(v2, ctx);
        let v2 = self.norm2.forward(&v);
        let v2 = self.multihead_attn.forward(&(&v2 + vis_pos), key, words, Some(pad), ctx);
        let v = &v + self.drop(self.cross_attn_norm.forward(&v2), ctx);
        let f = self.drop(self.ffn0.forward(&self.norm3.forward(&v)).relu(), ctx);
        let f = self.ffn4.forward(&self.ffn3.forward(&f));
        v + self.drop(f, ctx)
    }
}

/// 1-D sine positions (1,L,C): channel 2k = sin(l·div_k), 2k+1 = cos(l·div_k),
/// div_k = exp(-2k·ln(10000)/C).
pub fn pos1d(c: i64, l: i64, opts: (Kind, tch::Device)) -> Tensor {
    let pos = Tensor::arange(l, opts).unsqueeze(1); // (L,1)
    let div = (Tensor::arange_start_step(0, c, 2, opts) * (-(10000f64.ln()) / c as f64)).exp(); // (C/2)
    let arg = pos * div.unsqueeze(0); // (L,C/2)
    Tensor::stack(&[arg.sin(), arg.cos()], 2).reshape([1, l, c])
}

/// 2-D sine positions (1,HW,C), token n = y·W + x: with d = C/2, channels
/// [0,d) encode x (interleaved sin/cos), [d,C) encode y.
pub fn pos2d(c: i64, h: i64, w: i64, opts: (Kind, tch::Device)) -> Tensor {
    let d = c / 2;
    let div = (Tensor::arange_start_step(0, d, 2, opts) * (-(10000f64.ln()) / d as f64)).exp(); // (d/2)
    let ax = Tensor::arange(w, opts).unsqueeze(1) * div.unsqueeze(0); // (W,d/2)
    let ay = Tensor::arange(h, opts).unsqueeze(1) * div.unsqueeze(0); // (H,d/2)
    let px = Tensor::stack(&[ax.sin(), ax.cos()], 2).reshape([1, w, d]).expand([h, w, d], false);
    let py = Tensor::stack(&[ay.sin(), ay.cos()], 2).reshape([h, 1, d]).expand([h, w, d], false);
    Tensor::cat(&[px, py], 2).reshape([1, h * w, c])
}
