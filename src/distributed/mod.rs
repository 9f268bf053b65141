//! Data-parallel training and evaluation over processes, on libtorch's own
//! c10d: a TCPStore rendezvous and a Gloo process group (through the C++
//! shim c10d_shim.cpp), one code path for torchrun, Slurm and
//! `detris train --nproc-per-node N`.
//!
//! A process is one rank for its whole life, so the group is process-wide
//! (as `torch.distributed`'s default group): [`world`] is `None` in a plain
//! one-process run, and every hook below is then a no-op.

pub mod c10d;

use std::sync::OnceLock;

pub use c10d::{Group, Rendezvous};

static WORLD: OnceLock<Group> = OnceLock::new();

/// The process group this process belongs to, once [`init`] has run.
pub fn world() -> Option<&'static Group> {
    WORLD.get()
}

/// Joins the process group described by `r` (once per process).
pub fn init(r: &Rendezvous) -> anyhow::Result<&'static Group> {
    c10d::validate(r)?;
    let g = Group::join(r, "detris/").map_err(|e| anyhow::anyhow!("{e}"))?;
    WORLD.set(g).map_err(|_| anyhow::anyhow!("the process group was already initialised"))?;
    Ok(WORLD.get().unwrap())
}
