//! TextAdapter: dense multi-scale 1-D convolutions over the word
//! positions of a CLIP text block, SOT position excluded from the convs.
//! Keys under `txt_backbone.transformer.resblocks.{i}.adapter.`.

use tch::nn::Path;
use tch::Tensor;

use super::layers::{ConvBnRelu, Ctx, Init0, Linear};

/// The densely connected 1×1 / 3 / 5 branches shared by both adapters:
/// `dense_branch1` (a → a/2), `dense_branch2` (a+a/2 → a/16 → a/4, kernel 3),
/// `dense_branch3` (a+a/2+a/4 → a/16 → a/4, kernel 5). Works on 1-D (B,a,L)
/// or 2-D (B,a,H,W) input; the output has a channels.
#[derive(Debug)]
pub struct DenseBranches {
    pub b1: ConvBnRelu,
    pub b2: [ConvBnRelu; 2],
    pub b3: [ConvBnRelu; 2],
}

impl DenseBranches {
    pub fn new(p: &Path, a: i64, two_d: bool, eps: f64, init: Init0) -> DenseBranches {
        let dims = |o: i64, i: i64, k: i64| if two_d { vec![o, i, k, k] } else { vec![o, i, k] };
        let (h, q, s) = (a / 2, a / 4, a / 16);
        let b2 = p / "dense_branch2";
        let b3 = p / "dense_branch3";
        DenseBranches {
            b1: ConvBnRelu::basic(&(p / "dense_branch1"), &dims(h, a, 1), eps, init),
            b2: [
                ConvBnRelu::basic(&(&b2 / "0"), &dims(s, a + h, 1), eps, init),
                ConvBnRelu::basic(&(&b2 / "1"), &dims(q, s, 3), eps, init),
            ],
            b3: [
                ConvBnRelu::basic(&(&b3 / "0"), &dims(s, a + h + q, 1), eps, init),
                ConvBnRelu::basic(&(&b3 / "1"), &dims(q, s, 5), eps, init),
            ],
        }
    }

    /// (B,a,…) → (B,a,…) = cat[b1, b2, b3] over channels.
    pub fn forward(&self, xs: &Tensor, ctx: &Ctx) -> Tensor {
        let b1 = self.b1.forward(xs, ctx);
        let b2 = self.b2[1].forward(&self.b2[0].forward(&Tensor::cat(&[xs, &b1], 1), ctx), ctx);
        let b3 = self.b3[1].forward(&self.b3[0].forward(&Tensor::cat(&[xs, &b1, &b2], 1), ctx), ctx);
        Tensor::cat(&[b1, b2, b3], 1)
    }
}

#[derive(Debug)]
pub struct TextAdapter {
    pub fc1: Linear,
    pub fc2: Linear,
    pub dense: DenseBranches,
}

impl TextAdapter {
    /// `w` = text width, `t` = adapter dim. Official init: PyTorch defaults
    /// rounded to fp16 (done by the trainer's initialiser, see `weights`).
    pub fn new(p: &Path, w: i64, t: i64, eps: f64) -> TextAdapter {
        TextAdapter {
            fc1: Linear::new(&(p / "D_fc1"), w, t, Init0::TorchDefault),
            fc2: Linear::new(&(p / "D_fc2"), t, w, Init0::TorchDefault),
            dense: DenseBranches::new(p, t, false, eps, Init0::TorchDefault),
        }
    }

    /// x (B,L,W) → (B,L,W), before the 0.2 scale.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let x0 = self.fc1.forward(x).relu(); // (B,L,t)
        let l = x0.size()[1];
        let xs = x0.narrow(1, 1, l - 1).transpose(1, 2); // (B,t,L-1)
        let o = self.dense.forward(&xs, ctx).transpose(1, 2); // (B,L-1,t)
                                                              // Position 0 keeps x0 and then gets x0 added again: 2·x0[:,0] (a quirk
                                                              // the checkpoints were trained with).
        let o = Tensor::cat(&[x0.narrow(1, 0, 1), o], 1) + &x0;
        self.fc2.forward(&o)
    }
}
