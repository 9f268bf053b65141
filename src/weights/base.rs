//! A fine-tuned checkpoint's base: the files its frozen weights came from.
//!
//! A training checkpoint holds either every weight (self-contained) or only
//! the trained parts and, in its `detris.base` metadata, the files the rest
//! came from: for each its role, absolute path, size and SHA-256. The loader
//! ([`super::load_model_in`]) reads the base first and the checkpoint over
//! it; a base that is gone or changed is refused, naming it and the ways out.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::WeightFiles;

/// The metadata entry naming a checkpoint's base files (JSON, a list of [`BaseFile`]).
pub const META_BASE: &str = "detris.base";
/// `--base-weights auto` copies the frozen weights into the checkpoint when
/// the base files together are at most this large (the shipped model is a
/// few MB; an official DETRIS-B `.pth` is hundreds).
pub const COPY_LIMIT_BYTES: u64 = 64 << 20;
/// How long a chain of bases (a fine-tune of a fine-tune of ...) may be.
pub const MAX_DEPTH: usize = 8;

/// What a base file was to the run: the `--checkpoint` it started from, or a pretrained backbone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseRole {
    Checkpoint,
    Dinov2,
    Clip,
}

impl BaseRole {
    fn flag(self) -> &'static str {
        match self {
            BaseRole::Checkpoint => "--checkpoint",
            BaseRole::Dinov2 => "--dinov2",
            BaseRole::Clip => "--clip",
        }
    }
}

/// One base file, as it was when the run started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFile {
    pub role: BaseRole,
    /// Absolute.
    pub path: PathBuf,
    pub size: u64,
    /// `sha256:` and the hex digest of the file's bytes.
    pub digest: String,
}

/// SHA-256 of a file's bytes, as `sha256:<hex>`.
pub fn file_digest(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("sha256:{hex}"))
}

impl BaseFile {
    /// `path` as it is now (made absolute, sized, digested).
    pub fn of(role: BaseRole, path: &Path) -> Result<BaseFile> {
        let path = std::fs::canonicalize(path).with_context(|| format!("{}: no such file", path.display()))?;
        let size = std::fs::metadata(&path)?.len();
        Ok(BaseFile { role, digest: file_digest(&path)?, path, size })
    }

    /// Refuses a base that is gone or no longer the file the checkpoint was trained from.
    pub fn check(&self, checkpoint: &Path) -> Result<()> {
        let (ck, path, role) = (checkpoint.display(), self.path.display(), self.role.flag());
        let ways_out = format!(
            "put the file back at {path}, or pass the backbones it was trained from with --dinov2 and --clip \
             (every DETRIS model freezes them), or, where the base is at hand, write a self-contained file with \
             `detris export --checkpoint {ck} --out model.safetensors`"
        );
        let Ok(meta) = std::fs::metadata(&self.path) else {
            bail!(
                "{ck} holds only the trained weights; the frozen ones are in its base {path} (the run's {role}, \
                 {}), which is gone: {ways_out}",
                self.digest
            );
        };
        let changed = |found: String| {
            anyhow::anyhow!(
                "{ck} holds only the trained weights; its base {path} (the run's {role}) has changed since training \
                 (expected {} bytes, {}; found {found}): {ways_out}",
                self.size,
                self.digest
            )
        };
        if meta.len() != self.size {
            return Err(changed(format!("{} bytes", meta.len())));
        }
        let digest = file_digest(&self.path)?;
        if digest != self.digest {
            return Err(changed(digest));
        }
        Ok(())
    }
}

/// The base files of a checkpoint, loaded as [`WeightFiles`] of their roles.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Base {
    pub files: Vec<BaseFile>,
}

impl Base {
    /// The files of `files` as they are now.
    pub fn of(files: &WeightFiles) -> Result<Base> {
        let roles = [
            (BaseRole::Checkpoint, &files.checkpoint),
            (BaseRole::Dinov2, &files.dinov2),
            (BaseRole::Clip, &files.clip),
        ];
        let files =
            roles.into_iter().filter_map(|(r, p)| p.as_ref().map(|p| BaseFile::of(r, p))).collect::<Result<_>>()?;
        Ok(Base { files })
    }

    /// The base a checkpoint's metadata names, if any.
    pub fn from_metadata(meta: &BTreeMap<String, String>, path: &Path) -> Result<Option<Base>> {
        meta.get(META_BASE)
            .map(|json| serde_json::from_str(json))
            .transpose()
            .with_context(|| format!("{}: unreadable `{META_BASE}` metadata", path.display()))
    }

    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// Checks every file (see [`BaseFile::check`]); returns them as weight files to load.
    pub fn checked_files(&self, checkpoint: &Path) -> Result<WeightFiles> {
        let mut out = WeightFiles::default();
        for f in &self.files {
            f.check(checkpoint)?;
            let slot = match f.role {
                BaseRole::Checkpoint => &mut out.checkpoint,
                BaseRole::Dinov2 => &mut out.dinov2,
                BaseRole::Clip => &mut out.clip,
            };
            *slot = Some(f.path.clone());
        }
        Ok(out)
    }
}

/// How `best` and `last` hold the frozen weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BaseWeights {
    /// `copy` when the files the run starts from are at most 64 MiB together
    /// (the shipped model), else `link`.
    #[default]
    Auto,
    /// Every weight in every checkpoint: self-contained.
    Copy,
    /// Only the trained weights; the start files named by path and SHA-256,
    /// which must stay where they are (or `detris export` a self-contained file).
    Link,
}

/// The base a run's checkpoints name instead of holding the frozen weights,
/// or `None` when they hold them: `policy` says, and a start file inside the
/// run folder `out` (which the run overwrites) is always copied.
pub fn linked_base(files: &WeightFiles, policy: BaseWeights, out: &Path) -> Result<Option<Base>> {
    let paths: Vec<&PathBuf> = [&files.checkpoint, &files.dinov2, &files.clip].into_iter().flatten().collect();
    if paths.is_empty() || policy == BaseWeights::Copy {
        return Ok(None);
    }
    let mut total = 0;
    for p in &paths {
        total += std::fs::metadata(p).with_context(|| format!("{}: no such file", p.display()))?.len();
    }
    let out = std::fs::canonicalize(out).unwrap_or_else(|_| out.to_path_buf());
    let in_run_folder = paths.iter().any(|p| std::fs::canonicalize(p).is_ok_and(|p| p.starts_with(&out)));
    if in_run_folder || (policy == BaseWeights::Auto && total <= COPY_LIMIT_BYTES) {
        return Ok(None);
    }
    Ok(Some(Base::of(files)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base rewritten to the same size with other bytes is told by its digest.
    #[test]
    fn a_base_changed_in_place_is_refused_by_its_digest_and_a_gone_one_by_its_absence() {
        let path = std::env::temp_dir().join(format!("detris-base-{}.bin", std::process::id()));
        std::fs::write(&path, b"frozen weights").unwrap();
        let named = BaseFile::of(BaseRole::Dinov2, &path).unwrap();
        assert_eq!(named.size, 14);
        named.check(Path::new("best.safetensors")).unwrap();
        std::fs::write(&path, b"Frozen weights").unwrap();
        let e = named.check(Path::new("best.safetensors")).unwrap_err().to_string();
        assert!(e.contains("has changed") && e.contains(&named.digest) && e.contains("--dinov2"), "{e}");
        std::fs::remove_file(&path).unwrap();
        let e = named.check(Path::new("best.safetensors")).unwrap_err().to_string();
        assert!(e.contains("gone") && e.contains(&path.display().to_string()), "{e}");
    }
}
