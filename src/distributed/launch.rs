//! Who this process is, from the launcher's variables (one code path for
//! torchrun, Slurm and `detris train --nproc-per-node N`, which sets
//! torchrun's variables for the ranks it starts), and that own launcher.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::c10d::Rendezvous;

/// A rank's place in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rendezvous: Rendezvous,
    pub local_rank: usize,
    pub local_world: usize,
    /// Which variables it came from: "torchrun" or "slurm".
    pub launcher: &'static str,
}

fn parse<T: std::str::FromStr>(name: &str, v: String) -> Result<T> {
    v.trim().parse().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a non-negative integer"))
}

fn need(env: &dyn Fn(&str) -> Option<String>, name: &str, launcher: &str) -> Result<String> {
    env(name).ok_or_else(|| anyhow::anyhow!("{name} is not set (the {launcher} launch needs it)"))
}

/// The first host of a Slurm node list: `gpu[03-05,09],cpu1` → `gpu03`.
pub fn first_slurm_host(list: &str) -> Option<String> {
    let list = list.trim();
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']')? + end];
        let first = inner.split([',', '-']).next()?;
        Some(format!("{prefix}{first}"))
    } else if prefix.is_empty() {
        None
    } else {
        Some(prefix.to_string())
    }
}

/// This process's rank, from torchrun's variables (RANK, WORLD_SIZE, …) or
/// Slurm's (SLURM_PROCID, SLURM_NTASKS, …); `None` in a plain run.
pub fn from_env(env: &dyn Fn(&str) -> Option<String>, timeout: Duration) -> Result<Option<Launch>> {
    let launch = if env("RANK").is_some() || env("WORLD_SIZE").is_some() {
        let l = "torchrun";
        let rank: usize = parse("RANK", need(env, "RANK", l)?)?;
        let world: usize = parse("WORLD_SIZE", need(env, "WORLD_SIZE", l)?)?;
        let local_rank: usize = parse("LOCAL_RANK", env("LOCAL_RANK").unwrap_or_else(|| rank.to_string()))?;
        let local_world: usize =
            parse("LOCAL_WORLD_SIZE", env("LOCAL_WORLD_SIZE").unwrap_or_else(|| world.to_string()))?;
        let host = need(env, "MASTER_ADDR", l)?;
        let port: u16 = parse("MASTER_PORT", need(env, "MASTER_PORT", l)?)?;
        // torchrun's agent hosts the store already: every rank is a client.
        let agent_store = env("TORCHELASTIC_USE_AGENT_STORE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1"));
        let host_store = rank == 0 && !agent_store;
        Launch {
            rendezvous: Rendezvous { host, port, rank, world, host_store, timeout },
            local_rank,
            local_world,
            launcher: l,
        }
    } else if env("SLURM_PROCID").is_some() {
        let l = "slurm";
        let rank: usize = parse("SLURM_PROCID", need(env, "SLURM_PROCID", l)?)?;
        // Inside an srun step, the step's task count; else the allocation's.
        let (wname, world) = match env("SLURM_STEP_NUM_TASKS") {
            Some(v) => ("SLURM_STEP_NUM_TASKS", v),
            None => ("SLURM_NTASKS", need(env, "SLURM_NTASKS", l)?),
        };
        let world: usize = parse(wname, world)?;
        let local_rank: usize = parse("SLURM_LOCALID", env("SLURM_LOCALID").unwrap_or_else(|| "0".into()))?;
        let local_world: usize = match env("SLURM_NTASKS_PER_NODE") {
            Some(v) => parse("SLURM_NTASKS_PER_NODE", v.split('(').next().unwrap_or("").to_string())?,
            None => world,
        };
        let host = match env("MASTER_ADDR") {
            Some(h) => h,
            None => {
                let list = env("SLURM_JOB_NODELIST").or_else(|| env("SLURM_NODELIST")).ok_or_else(|| {
                    anyhow::anyhow!(
                        "neither MASTER_ADDR nor SLURM_JOB_NODELIST is set: no master host for the Slurm launch"
                    )
                })?;
                first_slurm_host(&list).ok_or_else(|| anyhow::anyhow!("SLURM_JOB_NODELIST={list:?}: no host in it"))?
            }
        };
        // One port per job on the master node unless MASTER_PORT says.
        let port: u16 = match env("MASTER_PORT") {
            Some(p) => parse("MASTER_PORT", p)?,
            None => {
                let job: u64 = parse("SLURM_JOB_ID", need(env, "SLURM_JOB_ID", l)?)?;
                15000 + (job % 10000) as u16
            }
        };
        Launch {
            rendezvous: Rendezvous { host, port, rank, world, host_store: rank == 0, timeout },
            local_rank,
            local_world,
            launcher: l,
        }
    } else {
        return Ok(None);
    };
    let (r, w) = (launch.rendezvous.rank, launch.rendezvous.world);
    let names = if launch.launcher == "slurm" { ("SLURM_PROCID", "SLURM_NTASKS") } else { ("RANK", "WORLD_SIZE") };
    if w == 0 {
        bail!("{}=0: at least one rank is needed", names.1);
    }
    if r >= w {
        bail!("{}={r} is not below {}={w}", names.0, names.1);
    }
    if launch.local_rank >= launch.local_world || launch.local_world > w {
        bail!("LOCAL_RANK={} / LOCAL_WORLD_SIZE={} do not fit WORLD_SIZE={w}", launch.local_rank, launch.local_world);
    }
    Ok(Some(launch))
}

/// The process environment, as [`from_env`] reads it.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

/// A port free on loopback now (the store binds it right after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `exe args` as rank `rank` of `nproc` on this machine, with torchrun's
/// variables (rank 0 hosts the store on loopback at `port`).
pub fn rank_command(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    rank: usize,
    nproc: usize,
    port: u16,
) -> Command {
    let mut c = Command::new(exe);
    c.args(args)
        .env("RANK", rank.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("WORLD_SIZE", nproc.to_string())
        .env("LOCAL_WORLD_SIZE", nproc.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("TORCHELASTIC_USE_AGENT_STORE", "False");
    c
}

/// `detris … --nproc-per-node N`: starts N ranks of this executable with
/// `args` and torchrun's variables (rank 0 hosts the store on loopback),
/// forwards SIGINT/SIGTERM to them, and when one fails ends the others and
/// returns its exit status (128 + signal when killed); 0 when all succeed.
pub fn run_local(nproc: usize, args: &[std::ffi::OsString], port: Option<u16>) -> Result<i32> {
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    let exe = std::env::current_exe().context("cannot find the detris executable to start the ranks")?;
    unsafe {
        libc::signal(libc::SIGINT, remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
        libc::signal(libc::SIGTERM, remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t);
    }
    let mut children: Vec<Option<Child>> = Vec::new();
    for rank in 0..nproc {
        let child = rank_command(&exe, args, rank, nproc, port)
            .spawn()
            .with_context(|| format!("cannot start rank {rank} ({})", exe.display()))?;
        children.push(Some(child));
    }
    let mut forwarded = 0;
    let mut failure: Option<i32> = None;
    loop {
        let sig = SIGNAL.load(Ordering::SeqCst);
        if sig != 0 && sig != forwarded {
            for c in children.iter().flatten() {
                unsafe { libc::kill(c.id() as i32, sig) };
            }
            forwarded = sig;
        }
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(c) = slot else { continue };
            if let Some(status) = c.try_wait()? {
                *slot = None;
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0));
                if code != 0 && failure.is_none() {
                    eprintln!("detris launcher: rank {rank} exited with status {code}; ending the other ranks");
                    failure = Some(code);
                }
            }
        }
        if children.iter().all(Option::is_none) {
            return Ok(failure.unwrap_or(0));
        }
        if failure.is_some() {
            end_all(&mut children);
            return Ok(failure.unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM to every live rank, SIGKILL to those still there after 10 s.
fn end_all(children: &mut [Option<Child>]) {
    for c in children.iter().flatten() {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && children.iter_mut().flatten().any(|c| c.try_wait().ok().flatten().is_none()) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in children.iter_mut().flatten() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn torchrun_variables_with_the_agent_store_make_every_rank_a_client() {
        let vars = [
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("WORLD_SIZE", "4"),
            ("LOCAL_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node7"),
            ("MASTER_PORT", "29400"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ];
        let l = from_env(&env_of(&vars), T).unwrap().unwrap();
        assert_eq!(
            l.rendezvous,
            Rendezvous { host: "node7".into(), port: 29400, rank: 0, world: 4, host_store: false, timeout: T }
        );
        assert_eq!((l.local_rank, l.local_world, l.launcher), (0, 2, "torchrun"));
        let mut own = vars;
        own[6].1 = "False";
        assert!(from_env(&env_of(&own), T).unwrap().unwrap().rendezvous.host_store, "rank 0 hosts without an agent");
    }

    #[test]
    fn slurm_variables_take_the_first_host_of_the_job() {
        let vars = [
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_NTASKS_PER_NODE", "2(x2)"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123456"),
        ];
        let l = from_env(&env_of(&vars), T).unwrap().unwrap();
        assert_eq!(
            l.rendezvous,
            Rendezvous { host: "gpu07".into(), port: 15000 + 3456, rank: 3, world: 4, host_store: false, timeout: T }
        );
        assert_eq!((l.local_rank, l.local_world, l.launcher), (1, 2, "slurm"));
        assert_eq!(first_slurm_host("a1,b2"), Some("a1".into()));
        assert_eq!(first_slurm_host("n[3,5-6]"), Some("n3".into()));
    }

    #[test]
    fn a_plain_run_has_no_launch_and_bad_variables_are_named() {
        assert_eq!(from_env(&env_of(&[]), T).unwrap(), None);
        let bad = |vars: &[(&str, &str)]| from_env(&env_of(vars), T).unwrap_err().to_string();
        let base = [("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "1")];
        assert!(bad(&base).contains("RANK=2 is not below WORLD_SIZE=2"), "{}", bad(&base));
        assert!(bad(&base[..3]).contains("MASTER_PORT is not set"));
        let port = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"), ("MASTER_PORT", "x")];
        assert!(bad(&port).contains("MASTER_PORT=\"x\""));
        assert!(bad(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).contains("SLURM_JOB_NODELIST"));
    }
}
