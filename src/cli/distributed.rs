//! The data-parallel options `detris train` and `detris eval` share, and the
//! one entry point for torchrun, Slurm and `--nproc-per-node`.

use std::ffi::OsString;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};
use detris::distributed::{self, launch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// NCCL on CUDA, Gloo on CPU (this build has Gloo only).
    Auto,
    Gloo,
    Nccl,
}

#[derive(Args, Clone, Debug)]
pub struct DistArgs {
    /// Start N ranks on this machine (data-parallel; rank 0 hosts the
    /// rendezvous store on loopback). Under torchrun or srun, leave it out:
    /// their variables (RANK, WORLD_SIZE, …, SLURM_PROCID, …) are read.
    #[arg(long, value_name = "N")]
    pub nproc_per_node: Option<usize>,
    /// The store's port for --nproc-per-node [default: a free one].
    #[arg(long)]
    pub master_port: Option<u16>,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Seconds a rank waits for the others (rendezvous, every collective)
    /// before it stops, naming the lost rank.
    #[arg(long, default_value_t = 60.0)]
    pub dist_timeout: f64,
}

/// What this process is.
pub enum Role {
    /// One process, no group.
    Plain,
    /// One rank of a group (joined).
    Rank,
    /// The launcher of --nproc-per-node: the ranks have run; their status.
    Launched(i32),
}

/// The command line without `--nproc-per-node N` (the ranks' arguments).
fn rank_args() -> Vec<OsString> {
    let mut out = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        if a == "--nproc-per-node" {
            args.next();
        } else if !a.to_string_lossy().starts_with("--nproc-per-node=") {
            out.push(a);
        }
    }
    out
}

impl DistArgs {
    /// Starts the ranks (--nproc-per-node), or joins the group the
    /// launcher's variables describe, or neither. `device` may be moved to
    /// `cuda:LOCAL_RANK`.
    pub fn enter(&self, device: &mut detris::device::DeviceArg) -> Result<Role> {
        if !(self.dist_timeout > 0.0 && self.dist_timeout.is_finite()) {
            return Err(super::usage(format!(
                "--dist-timeout {}: must be a positive number of seconds",
                self.dist_timeout
            )));
        }
        let timeout = Duration::from_secs_f64(self.dist_timeout);
        let found = launch::from_env(&launch::process_env, timeout).map_err(|e| super::usage(e.to_string()))?;
        let Some(l) = found else {
            return match self.nproc_per_node {
                Some(0) => Err(super::usage("--nproc-per-node must be at least 1")),
                Some(n) => Ok(Role::Launched(launch::run_local(n, &rank_args(), self.master_port)?)),
                None => Ok(Role::Plain),
            };
        };
        if self.backend == Backend::Nccl {
            return Err(super::usage(
                "--backend nccl: this detris is built with the Gloo backend only (Gloo also carries CUDA tensors); use --backend gloo or auto",
            ));
        }
        if let detris::device::DeviceArg::Cuda(_) = device {
            *device = detris::device::DeviceArg::Cuda(l.local_rank);
        }
        distributed::init(&l)?;
        Ok(Role::Rank)
    }
}
