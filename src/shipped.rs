//! The model that ships with detris (trained by detris on its synthetic
//! data), used when no `--checkpoint` is given.

use std::path::PathBuf;

use anyhow::{bail, Result};

pub const FILE_NAME: &str = "detris-synth.safetensors";

/// Looks beside the executable (`models/` next to it or one level up, for
/// installed copies), then in the source tree it was built from.
pub fn default_checkpoint() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("models").join(FILE_NAME));
            candidates.push(dir.join("../models").join(FILE_NAME));
        }
    }
    candidates.push(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")).join(FILE_NAME));
    for c in &candidates {
        if c.exists() {
            return Ok(c.clone());
        }
    }
    bail!(
        "no --checkpoint given and the shipped model {FILE_NAME} was not found (looked in: {})",
        candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(", ")
    )
}
