//! Data-parallel `detris train` / `detris eval` over 2 Gloo ranks of 1
//! thread each, on a small synthetic set from the shipped model: launched by
//! `--nproc-per-node`, by torchrun's variables and by Slurm's; 2 ranks equal
//! 1 process; a killed rank stops the other, naming it, and `--resume`
//! continues bit-identically; mismatched ranks and launcher mistakes are
//! refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

use common::{
    assert_success, fresh_temp_dir, max_abs_diff, set_flag, sorted_safetensors, synth_data, synth_train_args,
};

fn cmd(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_detris"));
    c.args(args).env("DETRIS_NO_PROGRESS", "1");
    for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"] {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// detris without any launcher variable of this test process's environment.
fn detris(args: &[&str]) -> Output {
    assert_success(cmd(args, &[]).output().unwrap(), &format!("detris {args:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Two ranks started as a launcher would, each with `env(rank, port)`.
fn spawn_ranks(args: &[&str], env: impl Fn(usize, u16) -> Vec<(&'static str, String)>) -> Vec<Child> {
    let port = free_port();
    (0..2).map(|r| cmd(args, &env(r, port)).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()).collect()
}

fn torchrun_env(rank: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", "2".into()),
        ("LOCAL_WORLD_SIZE", "2".into()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
        // No torchrun agent here to host the store: rank 0 does.
        ("TORCHELASTIC_USE_AGENT_STORE", "False".into()),
    ]
}

fn slurm_env(rank: usize, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("SLURM_PROCID", rank.to_string()),
        ("SLURM_LOCALID", rank.to_string()),
        ("SLURM_NTASKS", "2".into()),
        ("SLURM_JOB_NODELIST", "127.0.0.1".into()),
        ("SLURM_JOB_ID", "1".into()),
        ("MASTER_PORT", port.to_string()),
    ]
}

/// A small synthetic data set, made once per test.
fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = fresh_temp_dir(&format!("dist-{name}"));
    let data = synth_data(&dir, 20);
    (dir, data)
}

/// Training from the shipped model (so validation has something to find),
/// dropout 0 (N ranks cannot draw one process's dropout masks).
fn train_args<'a>(data: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = synth_train_args(data, out, &[&["--epochs", "1", "--dropout", "0"][..], extra].concat());
    for (flag, value) in [("--batch-size", "12"), ("--workers", "1"), ("--val-limit", "8")] {
        a = set_flag(a, flag, value);
    }
    a
}

/// The tensors of two checkpoints side by side (same names).
fn paired_tensors(a: &Path, b: &Path) -> Vec<(Tensor, Tensor)> {
    let (a, b) = (sorted_safetensors(a), sorted_safetensors(b));
    assert_eq!(a.len(), b.len());
    a.into_iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta, tb)
        })
        .collect()
}

/// The largest |Δ| over the tensors of two checkpoints.
fn max_diff(a: &Path, b: &Path) -> f64 {
    paired_tensors(a, b).iter().map(|(ta, tb)| max_abs_diff(ta, tb)).fold(0.0, f64::max)
}

/// ‖Δ‖₂ over every value of two checkpoints.
fn l2_diff(a: &Path, b: &Path) -> f64 {
    let squares: f64 = paired_tensors(a, b)
        .iter()
        .map(|(ta, tb)| (ta.to_kind(Kind::Double) - tb.to_kind(Kind::Double)).square().sum(Kind::Double).double_value(&[]))
        .sum();
    squares.sqrt()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn two_ranks_train_as_one_process_and_launchers_agree() {
    let (dir, data) = setup("train");
    let (one, two, env_run) = (dir.join("one"), dir.join("two"), dir.join("torchrun"));
    let out1 = detris(&train_args(&data, &one, &["--nproc-per-node", "1"]));
    let out2 = detris(&train_args(&data, &two, &["--nproc-per-node", "2"]));
    // The same process at 2 threads: f32 sums in another order, nothing else.
    let threads2 = dir.join("threads2");
    detris(&set_flag(train_args(&data, &threads2, &["--nproc-per-node", "1"]), "--threads", "2"));
    // 2 ranks sum their gradients in another order than one batch, and
    // SyncBatchNorm computes its statistics in two passes where libtorch's
    // kernel uses one: f32 rounding, which Adam turns into steps of up to lr
    // wherever a gradient is near its eps or its true value is zero (the
    // conv biases before a BatchNorm). So the bound is the noise floor
    // measured beside it (1 process at 1 vs 2 threads: the same rounding
    // effect), with a factor 2 of room, over every value (‖Δ‖₂): the largest
    // single |Δ| is one such bias's draw, 0.9-2.4x the floor's, by model.
    // Measured ‖Δ‖₂ 1.98e-4 vs 1.49e-4 on one machine.
    let d = l2_diff(&one.join("last.safetensors"), &two.join("last.safetensors"));
    let floor = l2_diff(&one.join("last.safetensors"), &threads2.join("last.safetensors"));
    assert!(floor > 0.0, "the thread count changes the rounding");
    assert!(d <= 2.0 * floor, "2 ranks vs 1 process: ‖Δ‖₂ {d}, 1 vs 2 threads: {floor}");
    let (m1, m2) = (metrics(&one), metrics(&two));
    assert_eq!(m1.len(), 1);
    assert_eq!(m1[0]["val_miou"], m2[0]["val_miou"], "validation identical");
    assert_eq!(m1[0]["val_oiou"], m2[0]["val_oiou"]);
    assert!(m1[0]["val_miou"].as_f64().unwrap() > 0.0, "validation finds objects: {}", m1[0]);
    for out in [&out1, &out2] {
        let log = String::from_utf8_lossy(&out.stderr);
        assert_eq!(log.matches("epoch 1/1").count(), 1, "rank 0 alone reports:\n{log}");
    }
    // torchrun's variables: the same ranks, bit for bit.
    let ranks = spawn_ranks(&train_args(&data, &env_run, &[]), torchrun_env);
    for (r, c) in ranks.into_iter().enumerate() {
        assert_success(c.wait_with_output().unwrap(), &format!("torchrun-style rank {r}"));
    }
    assert_eq!(max_diff(&two.join("last.safetensors"), &env_run.join("last.safetensors")), 0.0);
    std::fs::remove_dir_all(&dir).ok();
}

fn eval_json(out: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    for r in v.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("seconds");
    }
    v
}

#[test]
fn eval_over_two_ranks_equals_one_process_under_every_launcher() {
    let (dir, data) = setup("eval");
    let args = |json: &Path| -> Vec<String> {
        [
            "eval",
            "--data",
            data.to_str().unwrap(),
            "--dataset",
            "synth",
            "--split",
            "val,test",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--workers",
            "1",
            "--device",
            "cpu",
            "--json",
            json.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |json: &Path, extra: &[&str]| {
        let mut a = args(json);
        a.extend(extra.iter().map(|s| s.to_string()));
        detris(&a.iter().map(String::as_str).collect::<Vec<_>>());
    };
    let (j1, j2) = (dir.join("one.json"), dir.join("two.json"));
    run(&j1, &[]);
    run(&j2, &["--nproc-per-node", "2"]);
    let one = eval_json(&j1);
    assert!(one[0]["summary"]["count"].as_u64().unwrap() > 2, "{one}");
    assert_eq!(one, eval_json(&j2), "2 ranks (--nproc-per-node) vs 1 process");
    // The per-sentence records are gathered from both ranks, in the one-process order.
    let sentences = |json: &Path| std::fs::read_to_string(json.with_extension("sentences.jsonl")).unwrap();
    assert_eq!(
        sentences(&j1).lines().count() as u64,
        one.as_array().unwrap().iter().map(|r| r["summary"]["count"].as_u64().unwrap()).sum::<u64>()
    );
    assert_eq!(sentences(&j1), sentences(&j2), "per-sentence records: 2 ranks vs 1 process");
    for (name, env) in [("slurm", slurm_env as fn(usize, u16) -> _), ("torchrun", torchrun_env)] {
        let json = dir.join(format!("{name}.json"));
        let a = args(&json);
        let ranks = spawn_ranks(&a.iter().map(String::as_str).collect::<Vec<_>>(), env);
        for (r, c) in ranks.into_iter().enumerate() {
            assert_success(c.wait_with_output().unwrap(), &format!("{name} rank {r}"));
        }
        assert_eq!(one, eval_json(&json), "2 ranks ({name} variables) vs 1 process");
    }
    // torchrun's default: its agent hosts the store and every rank is a
    // client. This test stands in for the agent with a store of its own.
    let port = free_port();
    let agent = detris::distributed::Rendezvous {
        host: "127.0.0.1".into(),
        port,
        rank: 0,
        world: 1,
        host_store: true,
        timeout: Duration::from_secs(60),
    };
    let _store = detris::distributed::Group::join(&agent, "agent/").unwrap();
    let json = dir.join("agent.json");
    let a = args(&json);
    let ranks: Vec<Child> = (0..2)
        .map(|r| {
            let mut env = torchrun_env(r, port);
            env[6].1 = "True".into();
            cmd(&a.iter().map(String::as_str).collect::<Vec<_>>(), &env).stderr(Stdio::piped()).spawn().unwrap()
        })
        .collect();
    for (r, c) in ranks.into_iter().enumerate() {
        assert_success(c.wait_with_output().unwrap(), &format!("agent-store rank {r}"));
    }
    assert_eq!(one, eval_json(&json), "2 ranks (torchrun agent store) vs 1 process");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_killed_rank_stops_the_other_naming_it_and_resume_is_bit_identical() {
    let (dir, data) = setup("kill");
    let (straight, killed) = (dir.join("straight"), dir.join("killed"));
    let extra = ["--save-every", "1", "--dist-timeout", "20"];
    let args =
        |out, more: &[&'static str]| set_flag(train_args(&data, out, &[&extra[..], more].concat()), "--epochs", "2");
    detris(&args(&straight, &["--nproc-per-node", "2"]));
    let mut ranks = spawn_ranks(&args(&killed, &[]), torchrun_env);
    // Mid-epoch: once rank 0 has written a step checkpoint.
    let last = killed.join("last.safetensors");
    let t0 = Instant::now();
    while !last.exists() {
        assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    ranks[1].kill().unwrap();
    let killed_at = Instant::now();
    let survivor = ranks.remove(0).wait_with_output().unwrap();
    let waited = killed_at.elapsed();
    let _ = ranks[0].wait();
    let log = String::from_utf8_lossy(&survivor.stderr);
    assert!(!survivor.status.success(), "the survivor must fail:\n{log}");
    assert!(log.contains("lost rank 1"), "names the lost rank:\n{log}");
    // The bound is --dist-timeout (20 s) plus the few seconds the survivors
    // take to name the lost rank; the margin is for a loaded CI machine.
    assert!(waited < Duration::from_secs(20 + 30), "survivor took {waited:?}");
    detris(&args(&killed, &["--nproc-per-node", "2", "--resume"]));
    assert_eq!(max_diff(&straight.join("last.safetensors"), &last), 0.0, "resume after the kill");
    std::fs::remove_dir_all(&dir).ok();
}

fn failure(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mismatched_ranks_and_launcher_mistakes_are_refused_by_name() {
    let (dir, data) = setup("refuse");
    let out = dir.join("run");
    // Rank 1 with another learning rate.
    let port = free_port();
    let base = train_args(&data, &out, &["--dist-timeout", "30"]);
    let other = set_flag(base.clone(), "--lr", "1e-3");
    let ranks: Vec<Child> = [&base, &other]
        .iter()
        .enumerate()
        .map(|(r, a)| cmd(a, &torchrun_env(r, port)).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in ranks {
        let o = c.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && log.contains("other options"), "{log}");
    }
    // A port already in use on the store's host.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let one = |r: usize, w: &str, port: u16| {
        let mut e = torchrun_env(r, port);
        e[2].1 = w.into();
        e[3].1 = w.into();
        e
    };
    let log = failure(&mut cmd(&train_args(&data, &out, &["--dist-timeout", "5"]), &one(0, "1", port)));
    assert!(log.contains("MASTER_PORT"), "{log}");
    // Nobody at the master's port.
    let log = failure(&mut cmd(&train_args(&data, &out, &["--dist-timeout", "3"]), &one(1, "2", free_port())));
    assert!(log.contains("MASTER_ADDR"), "{log}");
    // RANK outside WORLD_SIZE, and a bad --batch-size split.
    let log = failure(&mut cmd(&train_args(&data, &out, &[]), &one(2, "2", free_port())));
    assert!(log.contains("RANK=2 is not below WORLD_SIZE=2"), "{log}");
    let odd = set_flag(train_args(&data, &out, &["--nproc-per-node", "2"]), "--batch-size", "3");
    let log = failure(&mut cmd(&odd, &[]));
    assert!(log.contains("--batch-size 3") && log.contains("remainder 1"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The rank processes a launcher started (Linux: /proc's child list).
fn children_of(pid: u32) -> Vec<u32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace().map(|p| p.parse().unwrap()).collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

#[test]
fn the_launcher_ends_the_ranks_when_one_dies_and_forwards_sigterm() {
    let (dir, data) = setup("launcher");
    for (name, victim) in [("killed-rank", true), ("sigterm", false)] {
        let out = dir.join(name);
        let args = set_flag(train_args(&data, &out, &["--nproc-per-node", "2", "--save-every", "1"]), "--epochs", "3");
        let launcher = cmd(&args, &[]).stderr(Stdio::piped()).spawn().unwrap();
        let t0 = Instant::now();
        while !out.join("last.safetensors").exists() {
            assert!(t0.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
        let ranks = children_of(launcher.id());
        assert_eq!(ranks.len(), 2, "two ranks running");
        let target = if victim { ranks[1] } else { launcher.id() };
        let sig = if victim { libc::SIGKILL } else { libc::SIGTERM };
        unsafe { libc::kill(target as i32, sig) };
        let o = launcher.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&o.stderr);
        // The launcher exits with the dead rank's status: 128 + the signal.
        assert_eq!(o.status.code(), Some(128 + sig), "{name}:\n{log}");
        if victim {
            assert!(log.contains("rank 1 exited with status 137"), "{log}");
        }
        assert!(ranks.iter().all(|&p| !alive(p)), "{name}: every rank ended");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_times_training_steps_over_two_ranks_against_one() {
    let dir = fresh_temp_dir("dist-bench");
    let json = dir.join("bench.json");
    let base = ["bench", "--variant", "detris-b", "--size", "28", "--train", "--infer", "false", "--threads", "1"];
    let quick = ["--runs", "1", "--rounds", "1", "--warmup", "0", "--precision", "f32"];
    let out = detris(
        &[&base[..], &quick, &["--ranks", "1,2", "--train-batch", "2", "--json", json.to_str().unwrap()]].concat(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for mode in ["plain", "fast"] {
        let line = text.lines().find(|l| l.starts_with(&format!("ranks: detris-b {mode} f32: 2 ranks")));
        assert!(line.is_some_and(|l| l.contains("speed-up") && l.contains("scaling efficiency")), "{text}");
    }
    let results: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ranks: Vec<u64> = results.iter().map(|r| r["case"]["ranks"].as_u64().unwrap()).collect();
    assert_eq!(ranks, [1, 1, 2, 2]);
    assert!(results.iter().all(|r| r["median_s"].as_f64().unwrap() > 0.0 && r["case"]["batch"] == 2));
    // Mistakes are usage errors naming the option.
    for (extra, needle) in [
        (&["--ranks", "2", "--train-batch", "3"][..], "must divide over --ranks 2 (remainder 1)"),
        (&["--ranks", "0"][..], "--ranks must be at least 1"),
    ] {
        let o = cmd(&[&base[..], extra].concat(), &[]).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
    let o = cmd(&["bench", "--ranks", "2"], &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--ranks times data-parallel training steps: it needs --train"));
    std::fs::remove_dir_all(&dir).ok();
}
