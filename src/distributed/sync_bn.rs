//! SyncBatchNorm: train-mode BatchNorm over the global batch of all ranks,
//! as `torch.nn.SyncBatchNorm`: batch mean and (biased) variance over every
//! rank's samples, running mean and unbiased running variance from the
//! global count, and a backward through the global statistics (the
//! statistics' all-reduce is differentiable: its backward sums over ranks).

use std::sync::atomic::{AtomicBool, Ordering};

use tch::Tensor;

use super::world;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns SyncBatchNorm on for this process's train-mode BatchNorms
/// (`sync_bn` in the official configs); effective only with 2+ ranks.
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether a train-mode BatchNorm should synchronise now.
pub fn active() -> bool {
    ENABLED.load(Ordering::SeqCst) && world().is_some_and(|g| g.world > 1)
}

/// x (N, C, *) → (N, C, *), normalised with the statistics of all ranks'
/// batches; updates `running_mean`/`running_var` (momentum `momentum`).
pub fn forward(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    momentum: f64,
    eps: f64,
) -> Tensor {
    let g = world().expect("SyncBatchNorm without a process group");
    let c = x.size()[1];
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let shape: Vec<i64> = (0..x.dim() as i64).map(|d| if d == 1 { c } else { 1 }).collect();
    let local = (x.numel() as i64 / c) as f64;
    // A forward cannot return an error: a lost rank ends this one here,
    // with the same message a failed step gives.
    let fail = |e: String| -> ! {
        eprintln!("error: {:#}", super::lost(g, "SyncBatchNorm", e));
        std::process::exit(1)
    };
    // One all-reduce for the sums and the count, one for the squared deviations.
    let count = Tensor::from_slice(&[local]).to_kind(x.kind()).to_device(x.device());
    let sums = Tensor::cat(&[x.sum_dim_intlist(dims.as_slice(), false, x.kind()), count], 0);
    let sums = g.allreduce_sum_autograd(&sums).unwrap_or_else(|e| fail(e));
    let n = sums.narrow(0, c, 1).detach();
    let total = n.double_value(&[0]);
    let mean = sums.narrow(0, 0, c) / &n;
    let xc = x - mean.view(shape.as_slice());
    let sq = (&xc * &xc).sum_dim_intlist(dims.as_slice(), false, x.kind());
    let var = g.allreduce_sum_autograd(&sq).unwrap_or_else(|e| fail(e)) / &n;
    tch::no_grad(|| {
        let unbiased = var.detach() * (total / (total - 1.0).max(1.0));
        let mut rm = running_mean.shallow_clone();
        let mut rv = running_var.shallow_clone();
        let _ = rm.copy_(&(running_mean * (1.0 - momentum) + mean.detach() * momentum));
        let _ = rv.copy_(&(running_var * (1.0 - momentum) + unbiased * momentum));
    });
    let invstd = (var + eps).rsqrt();
    xc * invstd.view(shape.as_slice()) * weight.view(shape.as_slice()) + bias.view(shape.as_slice())
}
