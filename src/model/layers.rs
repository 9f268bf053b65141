//! The building blocks every DETRIS module uses, each named and laid out as
//! its PyTorch counterpart so that variable paths equal checkpoint keys.

use std::cell::RefCell;
use std::collections::BTreeMap;

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::packed_linear::{Epilogue, PackedLinear};
use crate::distributed::sync_bn::SyncBn;

/// How a forward pass runs. `levers` picks the fused/simplified kernels; with
/// none of them (the plain mode) every step is computed as the official code
/// writes it.
pub struct Ctx<'a> {
    pub train: bool,
    pub levers: Levers,
    /// Records named intermediate outputs (parity tests, debugging).
    pub trace: Option<&'a Trace>,
    /// Train mode in a data-parallel run with `sync_bn`: the group the
    /// BatchNorms take their statistics over (SyncBatchNorm).
    pub sync_bn: Option<&'a SyncBn<'a>>,
}

/// The exact rewrites of the fast mode, each switchable so that `detris bench`
/// can measure what each one buys. Every combination gives the plain mode's
/// logits within the parity tolerance (tests/forward_parity.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Levers {
    /// libtorch's fused scaled-dot-product attention instead of matmul-softmax-matmul.
    pub fused_attention: bool,
    /// Inference BatchNorm as one per-channel affine (scale, shift) after the conv.
    pub folded_batchnorm: bool,
    /// The neck's attention to one sentence key computed as `out_proj(W_v t + b_v)`
    /// (attention over a single key is its value, exactly).
    pub single_key_neck: bool,
}

impl Levers {
    pub const PLAIN: Levers = Levers { fused_attention: false, folded_batchnorm: false, single_key_neck: false };
    /// The levers that measured faster (README, "Speed and memory"; the
    /// figures are in docs/bench/README.md). The BatchNorm affine is exact but
    /// measured no faster on CPU (it removes a tiny share of the work) and
    /// slower on an H200 at batch 1, where launches dominate: seven small
    /// kernels where BatchNorm is one.
    pub const FAST: Levers = Levers { fused_attention: true, folded_batchnorm: false, single_key_neck: true };

    /// Every lever on (`true`) or off.
    pub fn all(on: bool) -> Levers {
        Levers { fused_attention: on, folded_batchnorm: on, single_key_neck: on }
    }

    /// Each lever's name with the plain mode plus that one lever.
    pub fn named() -> [(&'static str, Levers); 3] {
        Lever::ALL.map(|l| (l.name(), l.alone()))
    }
}

/// One of the [`Levers`], by name (`detris bench` measures each alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lever {
    FusedAttention,
    FoldedBatchnorm,
    SingleKeyNeck,
}

impl Lever {
    pub const ALL: [Lever; 3] = [Lever::FusedAttention, Lever::FoldedBatchnorm, Lever::SingleKeyNeck];

    pub fn name(self) -> &'static str {
        match self {
            Lever::FusedAttention => "fused_attention",
            Lever::FoldedBatchnorm => "folded_batchnorm",
            Lever::SingleKeyNeck => "single_key_neck",
        }
    }

    /// The plain mode plus this lever alone.
    pub fn alone(self) -> Levers {
        let p = Levers::PLAIN;
        match self {
            Lever::FusedAttention => Levers { fused_attention: true, ..p },
            Lever::FoldedBatchnorm => Levers { folded_batchnorm: true, ..p },
            Lever::SingleKeyNeck => Levers { single_key_neck: true, ..p },
        }
    }
}

impl Ctx<'_> {
    pub fn eval() -> Ctx<'static> {
        Ctx { train: false, levers: Levers::FAST, trace: None, sync_bn: None }
    }
    pub fn record(&self, name: &str, t: &Tensor) {
        if let Some(trace) = self.trace {
            trace.0.borrow_mut().insert(name.to_string(), t.detach().shallow_clone());
        }
    }
}

/// Named intermediate tensors of one forward pass.
#[derive(Default)]
pub struct Trace(pub RefCell<BTreeMap<String, Tensor>>);

impl Trace {
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.0.borrow().get(name).map(|t| t.shallow_clone())
    }
    pub fn names(&self) -> Vec<String> {
        self.0.borrow().keys().cloned().collect()
    }
}

/// How a parameter starts before any weights are loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init0 {
    /// Frozen backbone weight: not trained, must come from a file.
    Frozen,
    /// PyTorch's default Linear/Conv init: kaiming_uniform(a=√5) = U(±1/√fan_in), bias U(±1/√fan_in).
    TorchDefault,
    /// DINOv2's `init_weights_vit_timm`: N(0, 0.02) truncated at ±2 (absolute), bias 0.
    TruncNormal02,
    /// kaiming_normal(fan_in, relu) = N(0, √(2/fan_in)), bias 0 (DenseAligner convs).
    KaimingNormal,
}

/// A frozen variable (no gradient) of zeros in the store's kind: tch's own
/// `zeros_no_train` always makes f32, so a bf16 model would first hold its
/// frozen weights in f32.
pub fn frozen_zeros(p: &Path, name: &str, dims: &[i64]) -> Tensor {
    p.add(name, Tensor::zeros(dims, (p.kind(), p.device())), false)
}

/// As [`frozen_zeros`], filled with ones.
pub fn frozen_ones(p: &Path, name: &str, dims: &[i64]) -> Tensor {
    p.add(name, Tensor::ones(dims, (p.kind(), p.device())), false)
}

fn param(p: &Path, name: &str, dims: &[i64], init: Init0, fan_in: i64, is_bias: bool) -> Tensor {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    match (init, is_bias) {
        (Init0::Frozen, _) => frozen_zeros(p, name, dims),
        (Init0::TorchDefault, _) => p.var(name, dims, Init::Uniform { lo: -bound, up: bound }),
        (Init0::TruncNormal02, false) => {
            let t = p.var(name, dims, Init::Randn { mean: 0.0, stdev: 0.02 });
            tch::no_grad(|| {
                let _ = t.shallow_clone().clamp_(-2.0, 2.0);
            });
            t
        }
        (Init0::KaimingNormal, false) => {
            p.var(name, dims, Init::Randn { mean: 0.0, stdev: (2.0 / fan_in.max(1) as f64).sqrt() })
        }
        (_, true) => p.var(name, dims, Init::Const(0.0)),
    }
}

/// `nn.Linear(i, o)`: keys `weight (o,i)`, `bias (o)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// oneDNN's packed copy of a frozen weight (inference on the CPU), set by
    /// [`super::packing::pack_frozen_linears`]; not a variable.
    pub packed: Option<PackedLinear>,
}

impl Linear {
    pub fn new(p: &Path, i: i64, o: i64, init: Init0) -> Linear {
        Linear {
            weight: param(p, "weight", &[o, i], init, i, false),
            bias: Some(param(p, "bias", &[o], init, i, true)),
            packed: None,
        }
    }
    /// (…, i) → (…, o)
    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, Epilogue::None)
    }
    /// After packing for inference: the plain weight's memory is released (the
    /// variable keeps its name and kind, with no elements).
    pub fn release_plain_weight(&mut self) {
        let empty = Tensor::empty([0], (self.weight.kind(), self.weight.device()));
        tch::no_grad(|| self.weight.set_data(&empty));
    }
    /// `gelu(forward(x))` (exact GELU), in one oneDNN call when packed.
    pub fn forward_gelu(&self, x: &Tensor) -> Tensor {
        self.forward_with(x, Epilogue::Gelu)
    }
    fn forward_with(&self, x: &Tensor, epilogue: Epilogue) -> Tensor {
        if let Some(p) = self.packed.as_ref().filter(|p| p.accepts(x)) {
            // Shapes and kinds were checked when packing and by `accepts`: a failure
            // here is a libtorch error, reported the way tch's own ops report theirs.
            return p.forward(x, epilogue).unwrap_or_else(|e| panic!("{e:#}"));
        }
        assert!(
            self.weight.numel() > 0,
            "a linear layer packed for inference (its plain weight released) was given an input it cannot take: \
             one that needs a gradient, is not on the CPU or is not of the packed kind"
        );
        let y = x.linear(&self.weight, self.bias.as_ref());
        match epilogue {
            Epilogue::None => y,
            Epilogue::Gelu => y.gelu("none"),
        }
    }
}

/// `nn.LayerNorm(d, eps)`: keys `weight`, `bias`.
#[derive(Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(p: &Path, d: i64, eps: f64, frozen: bool) -> LayerNorm {
        let (weight, bias) = if frozen {
            (frozen_ones(p, "weight", &[d]), frozen_zeros(p, "bias", &[d]))
        } else {
            (p.ones("weight", &[d]), p.zeros("bias", &[d]))
        };
        LayerNorm { weight, bias, eps }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let d = *x.size().last().unwrap();
        x.layer_norm([d], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `nn.BatchNorm1d/2d(c, eps, momentum=0.1)`: keys `weight`, `bias`,
/// `running_mean`, `running_var` (`num_batches_tracked` is accepted and
/// ignored by the weight loader: momentum is fixed, so it is never used).
#[derive(Debug)]
pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub eps: f64,
}

impl BatchNorm {
    pub fn new(p: &Path, c: i64, eps: f64) -> BatchNorm {
        BatchNorm {
            weight: p.ones("weight", &[c]),
            bias: p.zeros("bias", &[c]),
            running_mean: frozen_zeros(p, "running_mean", &[c]),
            running_var: frozen_ones(p, "running_var", &[c]),
            eps,
        }
    }
    /// Train mode: batch statistics, running statistics updated (unbiased
    /// variance, momentum 0.1), exactly libtorch's kernel.
    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        if let (true, Some(sync)) = (ctx.train, ctx.sync_bn) {
            // SyncBatchNorm: the statistics of every rank's batch.
            let (w, b, m, v) = (&self.weight, &self.bias, &self.running_mean, &self.running_var);
            return sync.forward(x, w, b, m, v, 0.1, self.eps);
        }
        x.batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            ctx.train,
            0.1,
            self.eps,
            true,
        )
    }
    /// Eval-mode BatchNorm as a per-channel affine `x·scale + shift`.
    pub fn eval_affine(&self) -> (Tensor, Tensor) {
        let scale = &self.weight / (&self.running_var + self.eps).sqrt();
        let shift = &self.bias - &self.running_mean * &scale;
        (scale, shift)
    }
}

/// Conv weight + optional bias, 1-D or 2-D (`nn.Conv1d/2d`, `nn.ConvTranspose2d`).
#[derive(Debug)]
pub struct Conv {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub padding: i64,
}

impl Conv {
    /// dims = weight shape `(out, in, k…)`.
    pub fn new(p: &Path, dims: &[i64], bias: bool, padding: i64, init: Init0) -> Conv {
        let fan_in: i64 = dims[1..].iter().product();
        Conv {
            weight: param(p, "weight", dims, init, fan_in, false),
            bias: bias.then(|| param(p, "bias", &[dims[0]], init, fan_in, true)),
            padding,
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.weight.dim() {
            3 => x.conv1d(&self.weight, self.bias.as_ref(), [1], [self.padding], [1], 1),
            _ => x.conv2d(&self.weight, self.bias.as_ref(), [1, 1], [self.padding, self.padding], [1, 1], 1),
        }
    }
}

/// Conv → BatchNorm → ReLU. The official `conv_layer` (bias-free conv, BN eps
/// 1e-5), `deconv_layer` (1×1 ConvTranspose, weight `(in,out,1,1)`) and the
/// adapters' `BasicConv1d/2d` (conv with bias, BN eps 1e-3) are all this.
/// Keys: `<conv>.weight[,bias]` and `<bn>.*` with the sub-names given.
#[derive(Debug)]
pub struct ConvBnRelu {
    pub conv: Conv,
    pub bn: BatchNorm,
    pub transposed: bool,
}

impl ConvBnRelu {
    /// `conv_layer`: sub-modules `0` (conv) and `1` (BN).
    pub fn conv_layer(p: &Path, cin: i64, cout: i64, k: i64, eps: f64) -> ConvBnRelu {
        ConvBnRelu {
            conv: Conv::new(&(p / "0"), &[cout, cin, k, k], false, k / 2, Init0::TorchDefault),
            bn: BatchNorm::new(&(p / "1"), cout, eps),
            transposed: false,
        }
    }
    /// `deconv_layer(k=1, s=1)`: ConvTranspose2d weight `(in, out, 1, 1)`.
    pub fn deconv_1x1(p: &Path, cin: i64, cout: i64, eps: f64) -> ConvBnRelu {
        // ConvTranspose2d's fan_in for the default init is computed from
        // weight.size(1) * k * k = cout.
        let conv = Conv::new(&(p / "0"), &[cin, cout, 1, 1], false, 0, Init0::TorchDefault);
        ConvBnRelu { conv, bn: BatchNorm::new(&(p / "1"), cout, eps), transposed: true }
    }
    /// `BasicConv1d/2d`: sub-modules `conv` (with bias) and `bn`; `dims` =
    /// conv weight shape.
    pub fn basic(p: &Path, dims: &[i64], eps: f64, init: Init0) -> ConvBnRelu {
        let k = dims[2];
        ConvBnRelu {
            conv: Conv::new(&(p / "conv"), dims, true, k / 2, init),
            bn: BatchNorm::new(&(p / "bn"), dims[0], eps),
            transposed: false,
        }
    }

    pub fn forward(&self, x: &Tensor, ctx: &Ctx) -> Tensor {
        let y = if self.transposed {
            x.conv_transpose2d(&self.conv.weight, self.conv.bias.as_ref(), [1, 1], [0, 0], [0, 0], 1, [1, 1])
        } else {
            self.conv.forward(x)
        };
        if ctx.levers.folded_batchnorm && !ctx.train {
            // BatchNorm folded into a per-channel affine after the conv.
            let (scale, shift) = self.bn.eval_affine();
            let shape: Vec<i64> = std::iter::once(-1).chain(std::iter::repeat(1).take(x.dim() - 2)).collect();
            return (y * scale.view(&shape[..]) + shift.view(&shape[..])).relu();
        }
        self.bn.forward(&y, ctx).relu()
    }
}

/// `nn.MultiheadAttention(e, heads)` with packed `in_proj_weight (3e,e)`,
/// `in_proj_bias (3e)`, `out_proj.{weight,bias}`. Inputs are batch-first here
/// `(B, S, e)`; callers transpose seq-first data.
#[derive(Debug)]
pub struct MultiheadAttention {
    pub in_proj_weight: Tensor,
    pub in_proj_bias: Tensor,
    pub out_proj: Linear,
    pub heads: i64,
    pub dropout: f64,
}

impl MultiheadAttention {
    pub fn new(p: &Path, e: i64, heads: i64, dropout: f64, frozen: bool) -> MultiheadAttention {
        let (in_proj_weight, in_proj_bias, out_proj) = if frozen {
            (
                frozen_zeros(p, "in_proj_weight", &[3 * e, e]),
                frozen_zeros(p, "in_proj_bias", &[3 * e]),
                Linear::new(&(p / "out_proj"), e, e, Init0::Frozen),
            )
        } else {
            // xavier_uniform on in_proj, zero biases; out_proj default Linear
            // weight with zero bias (PyTorch's MHA._reset_parameters).
            let bound = (6.0 / (e + 3 * e) as f64).sqrt();
            let w = p.var("in_proj_weight", &[3 * e, e], Init::Uniform { lo: -bound, up: bound });
            let b = p.var("in_proj_bias", &[3 * e], Init::Const(0.0));
            let out = Linear::new(&(p / "out_proj"), e, e, Init0::TorchDefault);
            if let Some(ob) = &out.bias {
                tch::no_grad(|| {
                    let _ = ob.shallow_clone().zero_();
                });
            }
            (w, b, out)
        };
        MultiheadAttention { in_proj_weight, in_proj_bias, out_proj, heads, dropout }
    }

    fn project(&self, x: &Tensor, part: i64) -> Tensor {
        let e = self.in_proj_weight.size()[1];
        x.linear(&self.in_proj_weight.narrow(0, part * e, e), Some(&self.in_proj_bias.narrow(0, part * e, e)))
    }

    /// q (B,Sq,e), k and v (B,Sk,e) → (B,Sq,e). `mask`: additive float
    /// (Sq,Sk) or key padding (B,Sk) bool with true = ignore.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&AttnMask>, ctx: &Ctx) -> Tensor {
        let q = split_heads(&self.project(q, 0), self.heads);
        let k = split_heads(&self.project(k, 1), self.heads);
        let v = split_heads(&self.project(v, 2), self.heads);
        let y = attention(&q, &k, &v, mask, if ctx.train { self.dropout } else { 0.0 }, ctx);
        self.out_proj.forward(&merge_heads(&y))
    }
}

/// An attention mask: additive `(Sq,Sk)` floats, or key padding `(B,Sk)`
/// booleans (true = ignore that key).
pub enum AttnMask {
    Additive(Tensor),
    KeyPadding(Tensor),
}

impl AttnMask {
    /// As an additive mask broadcastable to (B,h,Sq,Sk).
    fn additive(&self, kind: Kind) -> Tensor {
        match self {
            AttnMask::Additive(m) => m.to_kind(kind),
            AttnMask::KeyPadding(pad) => {
                let (b, s) = pad.size2().unwrap();
                Tensor::zeros([b, 1, 1, s], (kind, pad.device()))
                    .masked_fill(&pad.view([b, 1, 1, s]), f64::NEG_INFINITY)
            }
        }
    }
}

/// (B,S,e) → (B,h,S,e/h)
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, s, e) = x.size3().unwrap();
    x.view([b, s, heads, e / heads]).transpose(1, 2)
}

/// (B,h,S,d) → (B,S,h·d)
pub fn merge_heads(x: &Tensor) -> Tensor {
    let (b, h, s, d) = x.size4().unwrap();
    x.transpose(1, 2).contiguous().view([b, s, h * d])
}

/// Softmax attention on (B,h,S,d) heads, scaled by 1/√d. The plain mode
/// writes it out as the official code does (scale q, matmul, softmax,
/// dropout, matmul); the fast mode calls libtorch's fused kernel.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&AttnMask>, dropout: f64, ctx: &Ctx) -> Tensor {
    let d = *q.size().last().unwrap();
    let scale = 1.0 / (d as f64).sqrt();
    let mask = mask.map(|m| m.additive(q.kind()));
    if ctx.levers.fused_attention {
        return Tensor::scaled_dot_product_attention(q, k, v, mask.as_ref(), dropout, false, scale, false);
    }
    let mut attn = (q * scale).matmul(&k.transpose(-2, -1));
    if let Some(m) = &mask {
        attn += m;
    }
    let attn = attn.softmax(-1, q.kind());
    let attn = if dropout > 0.0 { attn.dropout(dropout, true) } else { attn };
    attn.matmul(v)
}

/// `QuickGELU` of CLIP: x·σ(1.702x).
pub fn quick_gelu(x: &Tensor) -> Tensor {
    x * (x * 1.702).sigmoid()
}
