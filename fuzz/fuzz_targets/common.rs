//! Shared by the fuzz targets. The file readers take paths (and memory-map
//! them), so an input is first written to a scratch file of this process's
//! own under `$TMPDIR` (`run.sh` points it at a tmpfs and removes it after).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use detris_io::TensorMap;

/// `$TMPDIR/detris-fuzz-<pid>`, created on first use.
pub fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("detris-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the scratch folder");
        dir
    })
}

/// Writes `data` to `<scratch>/<name>` and returns the path.
pub fn write(name: &str, data: &[u8]) -> PathBuf {
    let path = scratch().join(name);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("cannot create a scratch folder");
    }
    std::fs::write(&path, data).expect("cannot write a scratch file");
    path
}

/// Reads every byte of every tensor (a range outside its memory map would
/// panic here) and checks that the byte count matches dtype × shape.
pub fn touch(tensors: &TensorMap) -> u64 {
    let mut sum = 0u64;
    for (name, t) in tensors {
        let numel: usize = t.shape.iter().product();
        assert_eq!(t.bytes().len(), numel * t.dtype.size(), "tensor `{name}`: byte count vs shape");
        sum = t.bytes().iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
    }
    sum
}

/// A reader's error must name the file it is about.
pub fn assert_names(msg: &str, path: &Path) {
    let name = path.display().to_string();
    assert!(msg.contains(&name), "the error does not name the file {name}: {msg}");
}
