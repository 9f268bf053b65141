//! Adam exactly as `torch.optim.Adam` (single-tensor path, L2 weight decay
//! added to the gradient, no amsgrad) over the official two parameter groups,
//! and `clip_grad_norm_`, with the state in the open so that checkpoints can
//! hold it and `--resume` continues bit-identically.

use tch::Tensor;

/// A parameter group: its learning rate is `lr_scale × lr`.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamGroup {
    pub name: &'static str,
    pub lr_scale: f64,
}

/// One trained parameter with its Adam moments.
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
    pub exp_avg: Tensor,
    pub exp_avg_sq: Tensor,
    /// Its group, an index into [`Adam::groups`].
    pub group: usize,
}

/// The official optimizer's settings (`build_segmenter` and `train.py`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamOptions {
    /// The head's learning rate (`base_lr`).
    pub lr: f64,
    /// The backbone adapters learn at `lr_multi × lr`.
    pub lr_multi: f64,
    pub weight_decay: f64,
    /// Clip the gradients to this total 2-norm (0 = never).
    pub max_norm: f64,
}

pub struct Adam {
    /// The base learning rate of the epoch (MultiStepLR's value).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `torch.optim.Adam`'s `weight_decay`: `g + weight_decay × p`.
    pub weight_decay: f64,
    /// Clip the gradients to this total 2-norm before the step (0 = never).
    pub max_norm: f64,
    /// In name order.
    pub params: Vec<Param>,
    pub groups: Vec<ParamGroup>,
    /// Steps taken (the same for every parameter: all train every step).
    pub step: i64,
}

/// `build_segmenter`'s rule: the adapters inside the two backbones (the text
/// backbone's positional embedding excepted) learn at `lr_multi × base_lr`;
/// every other trainable parameter (neck, decoder, projector) is the head.
pub fn is_backbone_param(name: &str) -> bool {
    let text = name.starts_with("txt_backbone.") && !name.contains("positional_embedding");
    (text || name.starts_with("dinov2.")) && name.contains("adapter")
}

pub const BACKBONE_GROUP: usize = 0;
pub const HEAD_GROUP: usize = 1;

impl Adam {
    /// One group over the given named parameters (plain Adam, lr for all).
    pub fn new(named: Vec<(String, Tensor)>, lr: f64) -> Adam {
        let groups = vec![ParamGroup { name: "all", lr_scale: 1.0 }];
        Self::with_groups(named, lr, groups, |_| 0)
    }

    /// The official optimizer: group 0 the backbone adapters at
    /// `lr_multi × lr`, group 1 the head at `lr`.
    pub fn official(named: Vec<(String, Tensor)>, o: &AdamOptions) -> Adam {
        let groups =
            vec![ParamGroup { name: "backbone", lr_scale: o.lr_multi }, ParamGroup { name: "head", lr_scale: 1.0 }];
        let mut adam =
            Self::with_groups(named, o.lr, groups, |n| if is_backbone_param(n) { BACKBONE_GROUP } else { HEAD_GROUP });
        adam.weight_decay = o.weight_decay;
        adam.max_norm = o.max_norm;
        adam
    }

    fn with_groups(
        mut named: Vec<(String, Tensor)>,
        lr: f64,
        groups: Vec<ParamGroup>,
        group: impl Fn(&str) -> usize,
    ) -> Adam {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(name, tensor)| Param {
                group: group(&name),
                exp_avg: tensor.zeros_like().set_requires_grad(false),
                exp_avg_sq: tensor.zeros_like().set_requires_grad(false),
                name,
                tensor,
            })
            .collect();
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, max_norm: 0.0, params, groups, step: 0 }
    }

    /// The parameters themselves, in name order.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|p| &p.tensor)
    }

    /// The learning rate of group `g` this epoch.
    pub fn group_lr(&self, g: usize) -> f64 {
        self.lr * self.groups[g].lr_scale
    }

    pub fn zero_grad(&mut self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// `clip_grad_norm_(parameters, max_norm)` when `max_norm` > 0: the total
    /// 2-norm over every gradient, and all gradients multiplied by
    /// `min(1, max_norm / (norm + 1e-6))`. Called where the official loop
    /// calls it: on the gradients as they are (still multiplied by the f16
    /// loss scale, which it never unscales first). Returns the total norm (on
    /// the device, not read back).
    pub fn clip_grad_norm(&mut self) -> Option<Tensor> {
        if self.max_norm <= 0.0 {
            return None;
        }
        let grads: Vec<Tensor> = self.tensors().map(Tensor::grad).filter(|g| g.defined()).collect();
        if grads.is_empty() {
            return None;
        }
        tch::no_grad(|| {
            let norms: Vec<Tensor> = grads.iter().map(|g| g.norm()).collect();
            let total = Tensor::stack(&norms, 0).norm();
            let coef = (self.max_norm / (&total + 1e-6)).clamp_max(1.0);
            for mut g in grads {
                let _ = g.g_mul_(&coef.to_kind(g.kind()));
            }
            Some(total)
        })
    }

    /// One update. `grad_scale` divides the gradients first (mixed-precision
    /// loss scaling); parameters without a gradient are left alone, as torch does.
    pub fn step(&mut self, grad_scale: f64) {
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2_sqrt = (1.0 - self.beta2.powf(t)).sqrt();
        let lrs: Vec<f64> = (0..self.groups.len()).map(|g| self.group_lr(g)).collect();
        tch::no_grad(|| {
            for Param { tensor: p, exp_avg: m, exp_avg_sq: v, group, .. } in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if grad_scale != 1.0 { g / grad_scale } else { g };
                let g = if self.weight_decay != 0.0 { g + &*p * self.weight_decay } else { g };
                let step_size = lrs[*group] / bc1;
                let _ = m.lerp_(&g, 1.0 - self.beta1);
                // v·β₂ + (1-β₂)·g² ; p -= step_size · m / (√v/√bc₂ + ε)
                let _ = v.g_mul_scalar_(self.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - self.beta2)), &g);
                let denom = (v.sqrt() / bc2_sqrt) + self.eps;
                let _ = p.addcdiv_(&(&*m * -step_size), &denom);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn param(values: &[f64]) -> Tensor {
        Tensor::from_slice(values).to_kind(Kind::Double).set_requires_grad(true)
    }

    fn set_grad(p: &Tensor, g: &[f64]) {
        (p * Tensor::from_slice(g).to_kind(Kind::Double)).sum(Kind::Double).backward();
    }

    /// The official groups over the official trainable lists: the backbone
    /// group holds exactly the adapters of txt_backbone and dinov2, and the
    /// parameter counts are the spec's (2,715,696 and 3,110,448 backbone
    /// adapters; 25,518,129 and 26,306,097 trainable in all).
    #[test]
    fn groups_split_the_official_trainable_lists() {
        for (file, backbone_total, total) in
            [("trainable_base.tsv", 2_715_696u64, 25_518_129u64), ("trainable_large.tsv", 3_110_448, 26_306_097)]
        {
            let path = detris_io::fixtures::dir().join("../docs/keys").join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (mut backbone, mut all) = (0u64, 0u64);
            for line in text.lines().filter(|l| !l.is_empty()) {
                let cols: Vec<&str> = line.split('\t').collect();
                let numel: u64 = cols[2].parse().unwrap();
                all += numel;
                if is_backbone_param(cols[0]) {
                    assert!(cols[0].contains(".adapter."), "{}", cols[0]);
                    backbone += numel;
                } else {
                    assert!(["neck.", "decoder.", "proj."].iter().any(|p| cols[0].starts_with(p)), "{}", cols[0]);
                }
            }
            assert_eq!((backbone, all), (backbone_total, total), "{file}");
        }
        assert!(!is_backbone_param("txt_backbone.positional_embedding"));
        assert!(!is_backbone_param("dinov2.blocks.0.attn.qkv.weight"));
    }

    /// torch.optim.Adam with weight_decay 0.1 and two groups (lr_multi 0.5),
    /// one step, against its formula written out in f64: g' = g + wd·p,
    /// m = (1-β₁)g', v = (1-β₂)g'², p -= lr·m/(1-β₁) / (√v/√(1-β₂) + ε).
    #[test]
    fn weight_decay_and_group_lrs_follow_torch() {
        let (a, b) = (param(&[1.0, -2.0]), param(&[0.5]));
        let named =
            vec![("dinov2.blocks.1.adapter.w".to_string(), a.shallow_clone()), ("neck.w".into(), b.shallow_clone())];
        let mut opt = Adam::official(named, &AdamOptions { lr: 1e-2, lr_multi: 0.5, weight_decay: 0.1, max_norm: 0.0 });
        set_grad(&a, &[0.3, 0.0]);
        set_grad(&b, &[-4.0]);
        opt.step(1.0);
        let expect = |p: f64, g: f64, lr: f64| {
            let g = g + 0.1 * p;
            let (m, v) = (0.1 * g, 0.001 * g * g);
            p - lr * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
        };
        let got_a: Vec<f64> = Vec::try_from(&a.detach()).unwrap();
        let got_b: Vec<f64> = Vec::try_from(&b.detach()).unwrap();
        let want_a = [expect(1.0, 0.3, 5e-3), expect(-2.0, 0.0, 5e-3)];
        let want_b = [expect(0.5, -4.0, 1e-2)];
        // f64 arithmetic in a different order: agreement to 1e-15.
        for (g, w) in got_a.iter().zip(want_a).chain(got_b.iter().zip(want_b)) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        assert_eq!(opt.params.iter().map(|p| p.group).collect::<Vec<_>>(), [BACKBONE_GROUP, HEAD_GROUP]);
    }

    /// clip_grad_norm_: total = ‖(‖g₁‖, ‖g₂‖)‖, coefficient max_norm/(total+1e-6)
    /// clamped at 1; a small gradient is left alone.
    #[test]
    fn clipping_follows_clip_grad_norm() {
        let (a, b) = (param(&[0.0, 0.0]), param(&[0.0]));
        let named = vec![("neck.a".to_string(), a.shallow_clone()), ("neck.b".into(), b.shallow_clone())];
        let mut opt = Adam::official(named, &AdamOptions { lr: 1e-3, lr_multi: 1.0, weight_decay: 0.0, max_norm: 2.0 });
        set_grad(&a, &[3.0, 4.0]);
        set_grad(&b, &[12.0]);
        let total = opt.clip_grad_norm().unwrap().double_value(&[]);
        assert_eq!(total, 13.0);
        let coef = 2.0 / (13.0 + 1e-6);
        let ga: Vec<f64> = Vec::try_from(&a.grad()).unwrap();
        let gb: Vec<f64> = Vec::try_from(&b.grad()).unwrap();
        // f64 gradients, the same three operations: agreement to 1e-15 relative.
        for (g, w) in ga.iter().chain(&gb).zip([3.0 * coef, 4.0 * coef, 12.0 * coef]) {
            assert!((g - w).abs() < 1e-15 * w.abs(), "{g} vs {w}");
        }
        opt.max_norm = 100.0;
        opt.clip_grad_norm();
        let again: Vec<f64> = Vec::try_from(&b.grad()).unwrap();
        assert_eq!(again, gb, "coefficient clamped at 1");
        opt.max_norm = 0.0;
        assert!(opt.clip_grad_norm().is_none());
    }
}
