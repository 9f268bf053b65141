//! SyncBatchNorm: train-mode BatchNorm over the global batch of all ranks,
//! as `torch.nn.SyncBatchNorm`: batch mean and (biased) variance over every
//! rank's samples, running mean and unbiased running variance from the
//! global count, and a backward through the global statistics (the
//! statistics' all-reduce is differentiable: its backward sums over ranks).

use std::cell::RefCell;

use tch::Tensor;

use super::{lost, world, Group};

/// The process group a train-mode BatchNorm synchronises over, carried to
/// it by the forward context (`Ctx::sync_bn`). A forward cannot return an
/// error, so a collective that fails leaves its error (naming the lost rank)
/// here, the BatchNorms go on with their own batch's statistics, and the
/// step returns the error from [`SyncBn::check`] after the forward.
pub struct SyncBn<'g> {
    group: &'g Group,
    failure: RefCell<Option<anyhow::Error>>,
}

impl SyncBn<'static> {
    /// The handle for a run with `sync_bn` (the official configs' option)
    /// set to `on`: over this process's group when it has 2+ ranks, none
    /// otherwise (one process sees its whole batch).
    pub fn for_run(on: bool) -> Option<SyncBn<'static>> {
        world().filter(|g| on && g.world > 1).map(SyncBn::new)
    }
}

impl<'g> SyncBn<'g> {
    pub fn new(group: &'g Group) -> SyncBn<'g> {
        SyncBn { group, failure: RefCell::new(None) }
    }

    /// The failure of a collective since the last check, as an error
    /// naming the lost rank (the same a failed step gives).
    pub fn check(&self) -> anyhow::Result<()> {
        match self.failure.borrow_mut().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// x (N, C, *) → (N, C, *), normalised with the statistics of all ranks'
    /// batches; updates `running_mean`/`running_var` (momentum `momentum`).
    /// After a failed collective: this rank's batch statistics, the running
    /// ones untouched (the step fails at [`SyncBn::check`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Tensor {
        if self.failure.borrow().is_none() {
            match self.synchronised(x, weight, bias, running_mean, running_var, momentum, eps) {
                Ok(y) => return y,
                Err(e) => *self.failure.borrow_mut() = Some(lost(self.group, "SyncBatchNorm", e)),
            }
        }
        x.batch_norm(Some(weight), Some(bias), None::<&Tensor>, None::<&Tensor>, true, momentum, eps, false)
    }

    #[allow(clippy::too_many_arguments)]
    fn synchronised(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        momentum: f64,
        eps: f64,
    ) -> Result<Tensor, String> {
        let g = self.group;
        let c = x.size()[1];
        let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
        let shape: Vec<i64> = (0..x.dim() as i64).map(|d| if d == 1 { c } else { 1 }).collect();
        let local = (x.numel() as i64 / c) as f64;
        // One all-reduce for the sums and the count, one for the squared deviations.
        let count = Tensor::from_slice(&[local]).to_kind(x.kind()).to_device(x.device());
        let sums = Tensor::cat(&[x.sum_dim_intlist(dims.as_slice(), false, x.kind()), count], 0);
        let sums = g.allreduce_sum_autograd(&sums)?;
        let n = sums.narrow(0, c, 1).detach();
        let total = n.double_value(&[0]);
        let mean = sums.narrow(0, 0, c) / &n;
        let xc = x - mean.view(shape.as_slice());
        let sq = (&xc * &xc).sum_dim_intlist(dims.as_slice(), false, x.kind());
        let var = g.allreduce_sum_autograd(&sq)? / &n;
        tch::no_grad(|| {
            let unbiased = var.detach() * (total / (total - 1.0).max(1.0));
            let mut rm = running_mean.shallow_clone();
            let mut rv = running_var.shallow_clone();
            let _ = rm.copy_(&(running_mean * (1.0 - momentum) + mean.detach() * momentum));
            let _ = rv.copy_(&(running_var * (1.0 - momentum) + unbiased * momentum));
        });
        let invstd = (var + eps).rsqrt();
        Ok(xc * invstd.view(shape.as_slice()) * weight.view(shape.as_slice()) + bias.view(shape.as_slice()))
    }
}
