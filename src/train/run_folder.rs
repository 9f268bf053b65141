//! The run folder as one run's own: a new run is refused where a run lies
//! (unless it resumes it or overwrites it), a lock file keeps a second
//! process out while one writes, and `train.log` keeps the lines the
//! terminal showed. Only rank 0 of a data-parallel run claims the folder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::checkpoint;

/// What a run may do with a folder that already holds one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A new run: the folder must hold none.
    Fresh,
    /// Continue the run in the folder (`--resume`, or `--resume-from` one of its files).
    Resume,
    /// Replace the run in the folder: its files are removed first (`--overwrite`).
    Overwrite,
}

/// The files a run writes into its folder; their presence means the folder holds a run.
pub fn run_files(out: &Path) -> Vec<PathBuf> {
    let mut files = vec![
        checkpoint::last_path(out),
        checkpoint::best_path(out),
        checkpoint::official_path(out, false),
        checkpoint::official_path(out, true),
        out.join("metrics.jsonl"),
    ];
    files.extend([out.join("training.png"), log_path(out)]);
    files
}

/// `<out>/train.log`: the log lines of every run into the folder (not the progress bar).
pub fn log_path(out: &Path) -> PathBuf {
    out.join("train.log")
}

/// `<out>/.lock`: held while a run writes the folder.
pub fn lock_path(out: &Path) -> PathBuf {
    out.join(".lock")
}

/// Who holds a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub pid: u32,
    pub host: String,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl LockOwner {
    fn this_process() -> LockOwner {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        LockOwner { pid: std::process::id(), host: host_name(), started }
    }

    /// A lock of this host whose process is gone (killed): it guards nothing.
    fn is_stale(&self) -> bool {
        self.host == host_name() && !process_alive(self.pid)
    }

    fn describe(&self) -> String {
        let now = LockOwner::this_process().started;
        format!("pid {} on {}, started {} s ago", self.pid, self.host, now.saturating_sub(self.started))
    }
}

/// The folder claimed by this run: the lock (released when dropped) and `train.log`.
pub struct RunFolder {
    lock: Option<PathBuf>,
    log: Option<TrainLog>,
}

impl RunFolder {
    /// Claims `out` for a run as `claim` says; `writes` is false on ranks > 0 of a
    /// data-parallel run, which write nothing (rank 0 holds the lock). `notice`
    /// gets what the claim did beyond the plain case (a stale lock taken over).
    pub fn claim(out: &Path, claim: Claim, writes: bool, notice: &mut dyn FnMut(&str)) -> Result<RunFolder> {
        if !writes {
            return Ok(RunFolder { lock: None, log: None });
        }
        std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create the run folder", out.display()))?;
        let lock = take_lock(out, notice)?;
        let mut folder = RunFolder { lock: Some(lock), log: None };
        let present: Vec<PathBuf> = run_files(out).into_iter().filter(|f| f.exists()).collect();
        match claim {
            Claim::Fresh if !present.is_empty() => bail!(
                "{} holds a run ({}): give --resume to continue it, --overwrite to replace it, or another --out",
                out.display(),
                names(&present)
            ),
            Claim::Overwrite => {
                for f in &present {
                    std::fs::remove_file(f).with_context(|| format!("--overwrite: cannot remove {}", f.display()))?;
                }
                if !present.is_empty() {
                    notice(&format!("--overwrite: removed {} from {}", names(&present), out.display()));
                }
            }
            _ => {}
        }
        folder.log = Some(TrainLog::open(&log_path(out))?);
        Ok(folder)
    }

    /// The folder's `train.log` (none on ranks that write nothing).
    pub fn log(&self) -> Option<TrainLog> {
        self.log.clone()
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        // Only our own lock: a run that took over a stale one after us keeps its own.
        if let Some(lock) = &self.lock {
            if read_owner(lock).is_ok_and(|o| o.pid == std::process::id() && o.host == host_name()) {
                let _ = std::fs::remove_file(lock);
            }
        }
    }
}

fn names(files: &[PathBuf]) -> String {
    files.iter().filter_map(|f| f.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>().join(", ")
}

fn read_owner(lock: &Path) -> Result<LockOwner> {
    let text = std::fs::read_to_string(lock)?;
    Ok(serde_json::from_str(&text)?)
}

/// Creates `<out>/.lock` for this process, or takes over a stale one.
fn take_lock(out: &Path, notice: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let lock = lock_path(out);
    let me = LockOwner::this_process();
    let body = serde_json::to_string(&me)?;
    match OpenOptions::new().write(true).create_new(true).open(&lock) {
        Ok(mut f) => {
            f.write_all(body.as_bytes()).with_context(|| format!("{}: cannot write", lock.display()))?;
            return Ok(lock);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot create the lock", lock.display())),
    }
    let owner = match read_owner(&lock) {
        Ok(owner) => owner,
        Err(e) => {
            bail!("{}: a lock that cannot be read ({e}); if no run writes {}, delete it", lock.display(), out.display())
        }
    };
    if !owner.is_stale() {
        bail!(
            "{} is in use by another run ({}); wait for it to end, or choose another --out (if that process \
             is not a detris run into this folder, delete {})",
            out.display(),
            owner.describe(),
            lock.display()
        );
    }
    // Write beside, then rename over: the lock is never seen half-written.
    let tmp = out.join(format!(".lock.{}", me.pid));
    std::fs::write(&tmp, &body).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &lock).with_context(|| format!("{}: cannot replace the stale lock", lock.display()))?;
    if read_owner(&lock).ok().as_ref() != Some(&me) {
        bail!("{}: another run took over the stale lock at the same moment", lock.display());
    }
    notice(&format!("took over a stale lock of a run that is gone ({})", owner.describe()));
    Ok(lock)
}

/// Whether process `pid` of this host exists (a signal-0 probe: EPERM means it does).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer and its length are valid; gethostname NUL-terminates within it or truncates.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// `train.log`, shared by the trainer and the command that runs it.
#[derive(Clone)]
pub struct TrainLog(Arc<Mutex<File>>);

impl TrainLog {
    fn open(path: &Path) -> Result<TrainLog> {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(TrainLog(Arc::new(Mutex::new(f))))
    }

    /// Appends one line. A log that cannot be written does not stop training.
    pub fn line(&self, line: &str) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("detris-run-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_second_claim_is_refused_naming_the_pid_and_a_stale_lock_is_taken_over() {
        let out = temp("lock");
        let mut notes = Vec::new();
        let first = RunFolder::claim(&out, Claim::Fresh, true, &mut |n| notes.push(n.to_string())).unwrap();
        let err = RunFolder::claim(&out, Claim::Resume, true, &mut |_| {}).err().unwrap().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("in use"), "{err}");
        drop(first);
        assert!(!lock_path(&out).exists(), "the lock goes with the run");
        // A lock left by a process that no longer exists (pid beyond the kernel's limit).
        let dead = LockOwner { pid: i32::MAX as u32, host: host_name(), started: 0 };
        std::fs::write(lock_path(&out), serde_json::to_string(&dead).unwrap()).unwrap();
        let _second = RunFolder::claim(&out, Claim::Resume, true, &mut |n| notes.push(n.to_string())).unwrap();
        assert!(notes.iter().any(|n| n.contains("stale") && n.contains(&format!("pid {}", dead.pid))), "{notes:?}");
        assert!(read_owner(&lock_path(&out)).unwrap().pid == std::process::id());
        // Another host's lock is never taken as stale: its process cannot be probed from here.
        assert!(!LockOwner { host: format!("{}-elsewhere", host_name()), ..dead }.is_stale());
        std::fs::remove_dir_all(&out).ok();
    }

    #[test]
    fn a_folder_with_a_run_is_refused_unless_resumed_or_overwritten() {
        let out = temp("refuse");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        std::fs::write(out.join("notes.txt"), "mine").unwrap();
        let err = RunFolder::claim(&out, Claim::Fresh, true, &mut |_| {}).err().unwrap().to_string();
        assert!(err.contains("holds a run (metrics.jsonl)") && err.contains("--overwrite"), "{err}");
        assert!(!lock_path(&out).exists(), "a refused run leaves no lock");
        drop(RunFolder::claim(&out, Claim::Resume, true, &mut |_| {}).unwrap());
        assert!(out.join("metrics.jsonl").exists());
        drop(RunFolder::claim(&out, Claim::Overwrite, true, &mut |_| {}).unwrap());
        assert!(!out.join("metrics.jsonl").exists(), "--overwrite removes the run's files");
        assert!(out.join("notes.txt").exists(), "and nothing else");
        // Ranks > 0 neither lock nor check.
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let rank1 = RunFolder::claim(&out, Claim::Fresh, false, &mut |_| {}).unwrap();
        assert!(rank1.log().is_none() && !lock_path(&out).exists());
        std::fs::remove_dir_all(&out).ok();
    }
}
