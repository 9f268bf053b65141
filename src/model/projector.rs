//! Projector (CRIS): upsamples the decoder output ×4 and applies a
//! per-sample 3×3 kernel generated from the sentence. Keys under `proj.`.

use tch::nn::Path;
use tch::Tensor;

use super::layers::{Conv, ConvBnRelu, Ctx, Init0, Linear};
use crate::config::DetrisConfig;

#[derive(Debug)]
pub struct Projector {
    /// `vis.1` conv_layer(C→C), `vis.3` conv_layer(C→C/2), `vis.4` Conv2d(C/2→C/2, 1×1).
    pub vis1: ConvBnRelu,
    pub vis3: ConvBnRelu,
    pub vis4: Conv,
    /// `txt`: Linear(E → (C/2)·k·k + 1), the dynamic kernel and its bias.
    pub txt: Linear,
    pub kernel: i64,
}

impl Projector {
    pub fn new(p: &Path, c: &DetrisConfig) -> Projector {
        let (cw, k, eps) = (c.vis_dim as i64, c.proj_kernel as i64, c.neck_bn_eps);
        let half = cw / 2;
        let vis = p / "vis";
        Projector {
            vis1: ConvBnRelu::conv_layer(&(&vis / "1"), cw, cw, 3, eps),
            vis3: ConvBnRelu::conv_layer(&(&vis / "3"), cw, half, 3, eps),
            vis4: Conv::new(&(&vis / "4"), &[half, half, 1, 1], true, 0, Init0::TorchDefault),
            txt: Linear::new(&(p / "txt"), c.embed_dim as i64, half * k * k + 1, Init0::TorchDefault),
            kernel: k,
        }
    }

    /// x (B,C,g,g), sentence (B,E) → logits (B,1,4g,4g).
    pub fn forward(&self, x: &Tensor, sentence: &Tensor, ctx: &Ctx) -> Tensor {
        let up = |t: &Tensor| {
            let (_, _, h, w) = t.size4().unwrap();
            t.upsample_bilinear2d([2 * h, 2 * w], false, 2.0, 2.0)
        };
        let x = self.vis4.forward(&self.vis3.forward(&up(&self.vis1.forward(&up(x), ctx)), ctx));
        let (b, c, h, w) = x.size4().unwrap();
        let k = self.kernel;
        let dynamic = self.txt.forward(sentence); // (B, C·k·k + 1)
        let weight = dynamic.narrow(1, 0, c * k * k).reshape([b, c, k, k]);
        let bias = dynamic.narrow(1, c * k * k, 1).reshape([b]);
        // One output channel per sample: a grouped conv over the batch.
        let out = x.reshape([1, b * c, h, w]).conv2d(&weight, Some(&bias), [1, 1], [k / 2, k / 2], [1, 1], b);
        out.transpose(0, 1)
    }
}
