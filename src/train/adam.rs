//! Adam exactly as `torch.optim.Adam` (single-tensor path, no weight decay,
//! no amsgrad), with its state in the open so that checkpoints can hold it
//! and `--resume` continues bit-identically.

use tch::Tensor;

pub struct Adam {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// (name, parameter, exp_avg, exp_avg_sq), in name order.
    pub params: Vec<(String, Tensor, Tensor, Tensor)>,
    /// Steps taken (the same for every parameter: all train every step).
    pub step: i64,
}

impl Adam {
    /// Over the given named parameters (the model's trainable variables).
    pub fn new(mut named: Vec<(String, Tensor)>, lr: f64) -> Adam {
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let params = named
            .into_iter()
            .map(|(n, p)| {
                let m = p.zeros_like().set_requires_grad(false);
                let v = p.zeros_like().set_requires_grad(false);
                (n, p, m, v)
            })
            .collect();
        Adam { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, params, step: 0 }
    }

    pub fn zero_grad(&mut self) {
        for (_, p, _, _) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// One update. `grad_scale` divides the gradients first (mixed-precision
    /// loss scaling); parameters without a gradient are left alone, as torch does.
    pub fn step(&mut self, grad_scale: f64) {
        self.step += 1;
        let t = self.step as f64;
        let bc1 = 1.0 - self.beta1.powf(t);
        let bc2_sqrt = (1.0 - self.beta2.powf(t)).sqrt();
        let step_size = self.lr / bc1;
        tch::no_grad(|| {
            for (_, p, m, v) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let g = if grad_scale != 1.0 { g / grad_scale } else { g };
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
