//! Data-parallel training and evaluation over processes, on libtorch's own
//! c10d: a TCPStore rendezvous and a Gloo process group (through the C++
//! shim c10d_shim.cpp), one code path for torchrun, Slurm and
//! `detris train --nproc-per-node N`.
//!
//! A process is one rank for its whole life, so the group is process-wide
//! (as `torch.distributed`'s default group): [`world`] is `None` in a plain
//! one-process run, and every hook below is then a no-op.

pub mod c10d;
pub mod launch;
pub mod sampler;
pub mod sync_bn;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

pub use c10d::{Group, Rendezvous};
pub use launch::Launch;

static WORLD: OnceLock<Group> = OnceLock::new();

/// The process group this process belongs to, once [`init`] has run.
pub fn world() -> Option<&'static Group> {
    WORLD.get()
}

/// (rank, world size): (0, 1) in a plain run.
pub fn rank_and_size() -> (usize, usize) {
    world().map_or((0, 1), |g| (g.rank, g.world))
}

/// Whether this process writes the run's files and prints progress (rank 0).
pub fn is_main() -> bool {
    rank_and_size().0 == 0
}

/// Joins the process group of `l` (once per process). Errors name the
/// launcher variable at fault.
pub fn init(l: &Launch) -> Result<&'static Group> {
    let r = &l.rendezvous;
    let g = Group::join(r, "detris/").map_err(|e| {
        let secs = r.timeout.as_secs();
        if r.host_store && (e.contains("in use") || e.contains("EADDRINUSE")) {
            anyhow!(
                "MASTER_PORT={}: the port is already in use on this machine, so rank 0 cannot host the store ({e})",
                r.port
            )
        } else if !r.host_store
            && r.rank != 0
            && (e.contains("timed out") || e.contains("Timeout") || e.contains("connect"))
        {
            anyhow!(
                "MASTER_ADDR={} MASTER_PORT={}: the master's store did not answer within {secs} s \
                 (unreachable host, wrong port, or rank 0 not started) ({e})",
                r.host,
                r.port
            )
        } else {
            anyhow!(
                "joining the process group at MASTER_ADDR={} MASTER_PORT={} as rank {} of WORLD_SIZE={} failed \
                 (within {secs} s; do all ranks agree on WORLD_SIZE?): {e}",
                r.host,
                r.port,
                r.rank,
                r.world
            )
        }
    })?;
    WORLD.set(g).map_err(|_| anyhow!("the process group was already initialised"))?;
    let g = WORLD.get().unwrap();
    // A rank started with another WORLD_SIZE is refused by name.
    g.store_set(&format!("world/{}", g.rank), g.world.to_string().as_bytes()).map_err(|e| lost(g, "rendezvous", e))?;
    for other in 0..g.world {
        let theirs = g.store_get(&format!("world/{other}")).map_err(|e| lost(g, "rendezvous", e))?;
        if theirs != g.world.to_string().as_bytes() {
            bail!(
                "rank {other} was started with WORLD_SIZE={} where rank {} has WORLD_SIZE={}",
                String::from_utf8_lossy(&theirs),
                g.rank,
                g.world
            );
        }
    }
    Ok(g)
}

/// A failed collective as an error naming the ranks that are gone: every
/// survivor marks itself in the store; whoever has not within a few seconds
/// is named. When the store itself is gone, its host (rank 0) is.
pub fn lost(g: &Group, what: &str, e: String) -> anyhow::Error {
    let tail = "stopped; `--resume` continues from the last checkpoint";
    if g.store_set(&format!("alive/{}", g.rank), b"1").is_err() {
        return anyhow!("{what}: lost rank 0 (it hosted the store, which is gone): {e}; {tail}");
    }
    let deadline = Instant::now() + Duration::from_secs(3).min(g.timeout);
    let missing = loop {
        let missing: Vec<usize> =
            (0..g.world).filter(|r| !g.store_check(&format!("alive/{r}")).unwrap_or(false)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match missing.as_slice() {
        [] => anyhow!("{what} failed on rank {}: {e}; {tail}", g.rank),
        [r] => anyhow!("{what}: lost rank {r} (it stopped answering): {e}; {tail}"),
        rs => anyhow!("{what}: lost ranks {rs:?} (they stopped answering): {e}; {tail}"),
    }
}

/// A libtorch error from work that may talk to other ranks (a backward
/// through SyncBatchNorm): named as [`lost`] names it in a data-parallel run.
pub fn failed(what: &str, e: tch::TchError) -> anyhow::Error {
    match world() {
        Some(g) if g.world > 1 => lost(g, what, e.to_string()),
        _ => anyhow!("{what}: {e}"),
    }
}

/// A stable digest of bytes (the same binary on every rank).
pub fn digest_bytes(parts: &[&[u8]]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in parts {
        p.hash(&mut h);
    }
    h.finish()
}

/// Digest of the values of tensors (named, in the given order).
pub fn digest_tensors(named: &[(String, Tensor)]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, t) in named {
        name.hash(&mut h);
        let t = t.detach().to_device(Device::Cpu).contiguous().to_kind(Kind::Float).flatten(0, -1);
        let v = Vec::<f32>::try_from(&t).unwrap_or_default();
        for x in v {
            x.to_bits().hash(&mut h);
        }
    }
    h.finish()
}

/// Refuses to go on unless every rank has the same value of each named
/// digest (options, weights, data…), naming the first that differs.
pub fn agree(what: &BTreeMap<&str, u64>) -> Result<()> {
    let Some(g) = world() else { return Ok(()) };
    let mine = serde_json::to_vec(what)?;
    g.store_set(&format!("digest/{}", g.rank), &mine).map_err(|e| lost(g, "comparing the ranks' setups", e))?;
    for other in 0..g.world {
        let theirs = g.store_get(&format!("digest/{other}")).map_err(|e| lost(g, "comparing the ranks' setups", e))?;
        let theirs: BTreeMap<String, u64> = serde_json::from_slice(&theirs)?;
        for (k, v) in what {
            if theirs.get(*k) != Some(v) {
                bail!("rank {other} was started with other {k} than rank {}: every rank must get the same", g.rank);
            }
        }
    }
    Ok(())
}

/// Every rank takes rank 0's values of `tensors` (in place).
pub fn broadcast_from_main(tensors: &[Tensor]) -> Result<()> {
    let Some(g) = world() else { return Ok(()) };
    let refs: Vec<&Tensor> = tensors.iter().collect();
    g.broadcast(&refs, 0).map_err(|e| lost(g, "broadcasting rank 0's weights", e))
}

/// Gradients averaged over ranks in place (one coalesced all-reduce per
/// dtype), as DistributedDataParallel leaves them.
pub fn average_gradients<'a>(params: impl Iterator<Item = &'a Tensor>) -> Result<()> {
    let Some(g) = world() else { return Ok(()) };
    if g.world == 1 {
        return Ok(());
    }
    let grads: Vec<Tensor> = params.map(Tensor::grad).filter(Tensor::defined).collect();
    let mut by_kind: BTreeMap<String, Vec<&Tensor>> = BTreeMap::new();
    for t in &grads {
        by_kind.entry(format!("{:?}", t.kind())).or_default().push(t);
    }
    for ts in by_kind.values() {
        g.allreduce_sum(ts).map_err(|e| lost(g, "averaging the gradients", e))?;
        for t in ts {
            let mut t = (*t).shallow_clone();
            let _ = t.divide_scalar_(g.world as f64);
        }
    }
    Ok(())
}

/// The mean over ranks of one number per rank (the log's loss; every rank
/// sees the same value, so all stop together on a NaN).
pub fn mean_over_ranks(x: f64) -> Result<f64> {
    let Some(g) = world() else { return Ok(x) };
    let t = Tensor::from_slice(&[x]);
    g.allreduce_sum(&[&t]).map_err(|e| lost(g, "averaging the loss", e))?;
    Ok(t.double_value(&[0]) / g.world as f64)
}

/// Every rank's rows of `rows` (k × width int64, k may differ by rank),
/// concatenated in rank order.
pub fn allgather_rows(rows: &[Vec<i64>], width: usize) -> Result<Vec<Vec<i64>>> {
    let Some(g) = world() else { return Ok(rows.to_vec()) };
    let n = Tensor::from_slice(&[rows.len() as i64]);
    let counts = g.allgather(&n).map_err(|e| lost(g, "gathering the evaluation", e))?;
    let counts: Vec<i64> = counts.iter().map(|t| t.int64_value(&[0])).collect();
    let most = *counts.iter().max().unwrap_or(&0) as usize;
    let mut flat: Vec<i64> = rows.iter().flatten().copied().collect();
    flat.resize(most * width, 0);
    let mine = Tensor::from_slice(&flat).view([most as i64, width as i64]);
    let all = g.allgather(&mine).map_err(|e| lost(g, "gathering the evaluation", e))?;
    let mut out = Vec::new();
    for (t, &k) in all.iter().zip(&counts) {
        let v = Vec::<i64>::try_from(&t.flatten(0, -1)).map_err(|e| anyhow!("{e}"))?;
        out.extend(v.chunks(width.max(1)).take(k as usize).map(<[i64]>::to_vec));
    }
    Ok(out)
}

/// Every rank's string, in rank order, through the store (`key` unique per use).
pub fn allgather_string(key: &str, s: &str) -> Result<Vec<String>> {
    let Some(g) = world() else { return Ok(vec![s.to_string()]) };
    // Every rank makes the same calls in the same order: the call number
    // keeps one call's values apart from the last one's.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let key = &format!("{key}/{}", CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    g.store_set(&format!("{key}/{}", g.rank), s.as_bytes()).map_err(|e| lost(g, key, e))?;
    (0..g.world)
        .map(|r| {
            let v = g.store_get(&format!("{key}/{r}")).map_err(|e| lost(g, key, e))?;
            Ok(String::from_utf8_lossy(&v).into_owned())
        })
        .collect()
}

/// At the start of a data-parallel training run: refuses ranks started with
/// other options, data or weights than rank 0's, then gives every rank rank
/// 0's trainable parameters and BatchNorm buffers (as DistributedDataParallel
/// does when it wraps the model).
pub fn start_training(
    vars: &[(String, Tensor)],
    broadcast: &[Tensor],
    options: &serde_json::Value,
    data_files: &[std::path::PathBuf],
) -> Result<()> {
    if world().is_none() {
        return Ok(());
    }
    let mut data = Vec::new();
    for f in data_files {
        data.push(std::fs::read(f).map_err(|e| anyhow!("{}: {e}", f.display()))?);
    }
    let options = serde_json::to_vec(options)?;
    let digests = BTreeMap::from([
        ("options (or resume point)", digest_bytes(&[&options])),
        ("data", digest_bytes(&data.iter().map(Vec::as_slice).collect::<Vec<_>>())),
        ("weights", digest_tensors(vars)),
    ]);
    agree(&digests)?;
    broadcast_from_main(broadcast)
}
