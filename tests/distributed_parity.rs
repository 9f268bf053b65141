//! Distributed training parity with the official fixtures: as many ranks as
//! `tiny/io.safetensors` has samples (2), one sample each, SyncBatchNorm on,
//! gradients averaged over Gloo, reproduce the three Adam steps of
//! `tiny/train.safetensors` by the f64 rules of tests/train_parity.rs:
//! losses ≤ 1e-4 relative; step-0 gradients ≤ 1e-3 of each tensor's max
//! (exactly-zero parts only ≤ 1e-6 of the largest gradient); BatchNorm
//! running statistics after step 0 ≤ 1e-4 relative; after step 3,
//! |Δparam| ≤ 1e-6 where |g₀| > 1e-3·max|g₀|, ≤ 6·lr elsewhere.
//!
//! The ranks are this test binary started again as child processes with
//! torchrun's variables (SyncBatchNorm's group is process-wide).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;
use detris::distributed::sync_bn::SyncBn;
use detris::distributed::{self, launch};
use detris::model::{Ctx, Levers};
use detris::train::adam::Adam;
use detris::Detris;
use tch::{Kind, Tensor};

const TEST: &str = "two_ranks_with_sync_bn_reproduce_the_official_steps";
const LR: f64 = 1e-4;

/// One rank: three steps on its own sample; rank 0 writes what it saw.
fn rank_main(out: &str) {
    let l = launch::from_env(&launch::process_env, Duration::from_secs(60)).unwrap().expect("torchrun variables");
    distributed::init(&l).unwrap();
    let rank = l.rendezvous.rank as i64;
    let mut cfg = tiny_config();
    cfg.dropout = 0.0;
    let model = tiny_model(cfg, Kind::Double);
    let io = read_st("tiny/io.safetensors");
    let tr = read_st("tiny/train.safetensors");
    let img = io["input.img"].to_kind(Kind::Double).narrow(0, rank, 1);
    let ids = io["input.word"].narrow(0, rank, 1);
    let mask = tr["input.mask"].to_kind(Kind::Double).narrow(0, rank, 1);
    let trainable = model.vs.variables().into_iter().filter(|(_, v)| v.requires_grad()).collect();
    let mut opt = Adam::new(trainable, LR);
    let sync_bn = SyncBn::for_run(true);
    assert!(sync_bn.is_some(), "SyncBatchNorm over the two ranks");
    let ctx = Ctx { train: true, levers: Levers::all(false), trace: None, sync_bn: sync_bn.as_ref() };
    let vars = model.vs.variables();
    let mut saved: Vec<(String, Tensor)> = Vec::new();
    let mut losses = Vec::new();
    for step in 0..3 {
        opt.zero_grad();
        let (loss, _) = Detris::loss(&model.forward(&img, &ids, &ctx), &mask);
        sync_bn.as_ref().map_or(Ok(()), SyncBn::check).unwrap();
        losses.push(distributed::mean_over_ranks(loss.double_value(&[])).unwrap());
        loss.backward();
        distributed::average_gradients(opt.tensors()).unwrap();
        if step == 0 {
            for (name, v) in &vars {
                if v.requires_grad() {
                    let g = v.grad();
                    saved.push((format!("grad.{name}"), if g.defined() { g.copy() } else { v.zeros_like() }));
                } else if name.contains("running_") {
                    saved.push((format!("bn.{name}"), v.copy()));
                }
            }
        }
        opt.step(1.0);
    }
    for (name, v) in &vars {
        if v.requires_grad() {
            saved.push((format!("param.{name}"), v.detach().copy()));
        }
    }
    saved.push(("losses".into(), Tensor::from_slice(&losses)));
    if rank == 0 {
        Tensor::write_safetensors(&saved, out).unwrap();
    }
}

/// Where the official gradient is exactly zero (conv bias before a
/// train-mode BatchNorm, the key third of `in_proj_bias`): (start, len).
fn zero_gradient_part(name: &str, numel: i64) -> Option<(i64, i64)> {
    if name.contains("adapter.dense_branch") && name.ends_with("conv.bias") {
        return Some((0, numel));
    }
    name.ends_with("in_proj_bias").then_some((numel / 3, numel / 3))
}

#[test]
fn two_ranks_with_sync_bn_reproduce_the_official_steps() {
    if let Ok(out) = std::env::var("DETRIS_PARITY_OUT") {
        return rank_main(&out);
    }
    let world = read_st("tiny/io.safetensors")["input.img"].size()[0] as usize;
    let out = std::env::temp_dir().join(format!("detris-dist-parity-{}.safetensors", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(std::env::current_exe().unwrap())
                .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
                .env("DETRIS_PARITY_OUT", &out)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("OMP_NUM_THREADS", "1")
                .spawn()
                .unwrap()
        })
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        let status = c.wait_with_output().unwrap().status;
        assert!(status.success(), "rank {r} failed: {status}");
    }
    let run: BTreeMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    std::fs::remove_file(&out).ok();
    let tr = read_st("tiny/train.safetensors");

    let ours = Vec::<f64>::try_from(&run["losses"]).unwrap();
    let theirs = Vec::<f64>::try_from(&tr["f64.losses"]).unwrap();
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() / b.abs() <= 1e-4, "losses {ours:?} vs {theirs:?}");
    }
    let grads: Vec<(&str, &Tensor)> = run.iter().filter_map(|(k, v)| Some((k.strip_prefix("grad.")?, v))).collect();
    assert_eq!(grads.len(), tr.keys().filter(|k| k.starts_with("f64.step0.grad.")).count());
    let global_max = grads.iter().map(|(_, g)| max_abs(g)).fold(0.0, f64::max);
    for (name, g) in &grads {
        let reference = tr[&format!("f64.step0.grad.{name}")].flatten(0, -1);
        let g = g.flatten(0, -1);
        let n = g.numel() as i64;
        let rel = |a: &Tensor, b: &Tensor, what: &str| {
            let denom = max_abs(b);
            if denom == 0.0 {
                assert!(max_abs(a) <= 1e-6 * global_max, "{what}: reference is 0, ours {:e}", max_abs(a));
            } else {
                let e = max_abs_diff(a, b) / denom;
                assert!(e <= 1e-3, "{what}: gradient relative error {e:e}");
            }
        };
        match zero_gradient_part(name, n) {
            Some((start, len)) => {
                let z = max_abs(&g.narrow(0, start, len));
                assert!(z <= 1e-6 * global_max, "{name}: should-be-zero gradient {z:e}");
                if start > 0 {
                    rel(&g.narrow(0, 0, start), &reference.narrow(0, 0, start), name);
                    let rest = start + len;
                    rel(&g.narrow(0, rest, n - rest), &reference.narrow(0, rest, n - rest), name);
                }
            }
            None => rel(&g, &reference, name),
        }
    }
    let bns: Vec<(&str, &Tensor)> = run.iter().filter_map(|(k, v)| Some((k.strip_prefix("bn.")?, v))).collect();
    assert_eq!(bns.len(), tr.keys().filter(|k| k.starts_with("f64.step0.after.")).count());
    for (name, v) in bns {
        let reference = &tr[&format!("f64.step0.after.{name}")];
        let e = max_abs_diff(v, reference) / max_abs(reference).max(1e-30);
        assert!(e <= 1e-4, "{name}: running statistic (global count) relative error {e:e}");
    }
    for (name, p) in run.iter().filter_map(|(k, v)| Some((k.strip_prefix("param.")?, v))) {
        let reference = &tr[&format!("f64.step3.param.{name}")];
        let significant = tr[&format!("f64.step0.grad.{name}")].abs().gt(1e-3 * global_max);
        let diff = (p - reference).abs();
        let strict = max_abs(&diff.masked_select(&significant));
        let loose = max_abs(&diff.masked_select(&significant.logical_not()));
        assert!(strict <= 1e-6, "{name}: step-3 parameter differs by {strict:e}");
        assert!(loose <= 6.0 * LR, "{name}: step-3 parameter (noise-gradient part) differs by {loose:e}");
    }
}
