//! The frozen DINOv2 ViT with 4 registers and DenseAligners, and the three
//! feature taps.
//! Keys under `dinov2.` (the layout of `dinov2_vit{b,l}14_reg4_pretrain.pth`).

use tch::nn::Path;
use tch::{Kind, Tensor};

use super::dense_aligner::DenseAligner;
use super::layers::{attention, frozen_zeros, merge_heads, Ctx, Init0, LayerNorm, Linear};
use crate::config::DetrisConfig;

#[derive(Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub ls1: Tensor,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub ls2: Tensor,
    pub adapter: Option<DenseAligner>,
    pub heads: i64,
}

#[derive(Debug)]
pub struct DinoV2 {
    pub cls_token: Tensor,
    pub pos_embed: Tensor,
    pub register_tokens: Tensor,
    pub mask_token: Tensor,
    pub patch_proj: crate::model::layers::Conv,
    pub blocks: Vec<Block>,
    pub norm: LayerNorm,
    pub patch: i64,
    pub pos_grid: i64,
    pub interpolate_offset: f64,
    pub taps: Vec<usize>,
    pub adapter_scale: f64,
}

/// Tokens after the blocks that do not depend on the text (patch embedding
/// and every block before the first adapter), shareable between sentences.
pub struct SharedTokens {
    /// (B,T,D) residual stream entering block `next_block`.
    pub x: Tensor,
    pub next_block: usize,
    /// Taps already taken (blocks before `next_block`).
    pub taps: Vec<(usize, Tensor)>,
    pub grid: i64,
}

impl DinoV2 {
    pub fn new(p: &Path, c: &DetrisConfig) -> DinoV2 {
        let d = c.dino_dim as i64;
        let hidden = d * c.mlp_ratio as i64;
        let blocks = (0..c.dino_depth)
            .map(|i| {
                let b = p / "blocks" / i;
                Block {
                    norm1: LayerNorm::new(&(&b / "norm1"), d, c.dino_ln_eps, true),
                    qkv: Linear::new(&(&b / "attn" / "qkv"), d, 3 * d, Init0::Frozen),
                    proj: Linear::new(&(&b / "attn" / "proj"), d, d, Init0::Frozen),
                    ls1: frozen_zeros(&(&b / "ls1"), "gamma", &[d]),
                    norm2: LayerNorm::new(&(&b / "norm2"), d, c.dino_ln_eps, true),
                    fc1: Linear::new(&(&b / "mlp" / "fc1"), d, hidden, Init0::Frozen),
                    fc2: Linear::new(&(&b / "mlp" / "fc2"), hidden, d, Init0::Frozen),
                    ls2: frozen_zeros(&(&b / "ls2"), "gamma", &[d]),
                    adapter: c.dino_adapter_layers.contains(&i).then(|| DenseAligner::new(&(&b / "adapter"), c)),
                    heads: c.dino_heads as i64,
                }
            })
            .collect();
        let patch = c.patch_size as i64;
        let pp = p / "patch_embed" / "proj";
        DinoV2 {
            cls_token: frozen_zeros(p, "cls_token", &[1, 1, d]),
            pos_embed: frozen_zeros(p, "pos_embed", &[1, 1 + (c.pos_grid * c.pos_grid) as i64, d]),
            register_tokens: frozen_zeros(p, "register_tokens", &[1, c.register_tokens as i64, d]),
            mask_token: frozen_zeros(p, "mask_token", &[1, d]),
            patch_proj: crate::model::layers::Conv {
                weight: frozen_zeros(&pp, "weight", &[d, 3, patch, patch]),
                bias: Some(frozen_zeros(&pp, "bias", &[d])),
                padding: 0,
            },
            blocks,
            norm: LayerNorm::new(&(p / "norm"), d, c.dino_ln_eps, true),
            patch,
            pos_grid: c.pos_grid as i64,
            interpolate_offset: c.interpolate_offset,
            taps: c.taps.clone(),
            adapter_scale: c.adapter_scale,
        }
    }

    /// The class + patch position embedding resized to a g×g grid (1,1+g²,D):
    /// bicubic, no antialias, scale factor (g+0.1)/37 (so the source
    /// coordinate uses 1/scale, not 37/g). Computed in f32 as the official
    /// code does even in an f64 model.
    pub fn interpolated_pos_embed(&self, g: i64) -> Tensor {
        let pos = self.pos_embed.to_kind(Kind::Float);
        let d = pos.size()[2];
        let n = self.pos_grid;
        let cls = pos.narrow(1, 0, 1);
        let patch = pos.narrow(1, 1, n * n).reshape([1, n, n, d]).permute([0, 3, 1, 2]);
        let s = (g as f64 + self.interpolate_offset) / n as f64;
        let out = (n as f64 * s).floor() as i64;
        let patch = patch.upsample_bicubic2d([out, out], false, s, s);
        let patch = patch.permute([0, 2, 3, 1]).reshape([1, out * out, d]);
        Tensor::cat(&[cls, patch], 1).to_kind(self.pos_embed.kind())
    }

    /// img (B,3,S,S) → tokens (B,1+R+g²,D) [CLS, registers, patches] run
    /// through every block before the first adapter block.
    pub fn shared_tokens(&self, img: &Tensor, ctx: &Ctx) -> SharedTokens {
        let b = img.size()[0];
        let p = img.conv2d(
            &self.patch_proj.weight,
            self.patch_proj.bias.as_ref(),
            [self.patch, self.patch],
            [0, 0],
            [1, 1],
            1,
        );
        let g = p.size()[2];
        let p = p.flatten(2, -1).transpose(1, 2); // (B,g²,D)
        ctx.record("dino.patch_embed", &p);
        let d = p.size()[2];
        let pos = self.interpolated_pos_embed(g);
        ctx.record("dino.pos_embed_interp", &pos);
        let x = Tensor::cat(&[self.cls_token.expand([b, 1, d], false), p.shallow_clone()], 1) + pos;
        let r = self.register_tokens.size()[1];
        let x =
            Tensor::cat(&[x.narrow(1, 0, 1), self.register_tokens.expand([b, r, d], false), x.narrow(1, 1, g * g)], 1);
        let first_adapter = self.blocks.iter().position(|b| b.adapter.is_some()).unwrap_or(self.blocks.len());
        let mut shared = SharedTokens { x, next_block: 0, taps: Vec::new(), grid: g };
        let empty = Tensor::zeros([0], (p.kind(), p.device()));
        self.run_blocks(&mut shared, first_adapter, &empty, ctx);
        shared
    }

    /// Runs the remaining blocks with the word features; returns the three
    /// taps [v3, v4, v5], each (B,D,g,g). `words` (B,L,W) must have the
    /// batch size of `shared` (expand `shared` first for several sentences).
    pub fn forward_with_words(&self, mut shared: SharedTokens, words: &Tensor, ctx: &Ctx) -> [Tensor; 3] {
        self.run_blocks(&mut shared, self.blocks.len(), words, ctx);
        let g = shared.grid;
        let final_tap = self.norm.forward(&shared.x);
        let to_map = |x: &Tensor| {
            let (b, t, d) = x.size3().unwrap();
            x.narrow(1, t - g * g, g * g).reshape([b, g, g, d]).permute([0, 3, 1, 2]).contiguous()
        };
        let find = |i: usize| shared.taps.iter().find(|(j, _)| *j == self.taps[i]).map(|(_, t)| to_map(t)).unwrap();
        let v = [find(0), find(1), to_map(&final_tap)];
        for (i, t) in v.iter().enumerate() {
            ctx.record(&format!("fusion.0.{i}"), t);
        }
        v
    }

    fn run_blocks(&self, s: &mut SharedTokens, until: usize, words: &Tensor, ctx: &Ctx) {
        while s.next_block < until {
            let i = s.next_block;
            let blk = &self.blocks[i];
            let x = &s.x;
            let attn = blk.attention(&blk.norm1.forward(x), ctx);
            let x = x + &blk.ls1 * attn;
            let h = blk.norm2.forward(&x);
            let mut out = blk.fc2.forward(&blk.fc1.forward_gelu(&h));
            if let Some(adapter) = &blk.adapter {
                let name = format!("dino.blocks.{i}.adapter");
                let a = adapter.forward(&h, words, s.grid, &name, ctx);
                ctx.record(&name, &a);
                out = out + a * self.adapter_scale;
            }
            // LayerScale gamma also scales the adapter output (as trained).
            s.x = x + &blk.ls2 * out;
            ctx.record(&format!("dino.blocks.{i}"), &s.x);
            if self.taps.contains(&i) {
                s.taps.push((i, s.x.shallow_clone()));
            }
            s.next_block += 1;
        }
    }
}

impl Block {
    /// Multi-head self-attention: (B,T,D) → (B,T,D).
    fn attention(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let qkv = self.qkv.forward(x).reshape([b, t, 3, self.heads, d / self.heads]).permute([2, 0, 3, 1, 4]);
        let y = attention(&qkv.get(0), &qkv.get(1), &qkv.get(2), None, 0.0, ctx);
        self.proj.forward(&merge_heads(&y))
    }
}

impl SharedTokens {
    /// Repeats a single image's tokens for `k` sentences: (1,T,D) → (k,T,D).
    pub fn repeat(&self, k: i64) -> SharedTokens {
        let rep = |t: &Tensor| t.expand([k, t.size()[1], t.size()[2]], false);
        SharedTokens {
            x: rep(&self.x),
            next_block: self.next_block,
            taps: self.taps.iter().map(|(i, t)| (*i, rep(t))).collect(),
            grid: self.grid,
        }
    }
}
