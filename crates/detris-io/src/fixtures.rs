//! Where the golden fixtures of the official implementation live.
//!
//! `DETRIS_FIXTURE_DIR` overrides; the default is `../shared/fixtures` beside
//! the checkout (as on the developers' machines and in CI).

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    match std::env::var_os("DETRIS_FIXTURE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures")),
    }
}

/// `../shared/images` beside the checkout (the real photographs).
pub fn images_dir() -> PathBuf {
    match std::env::var_os("DETRIS_IMAGES_DIR") {
        Some(d) => PathBuf::from(d),
        None => dir().join("../images"),
    }
}

pub fn path(rel: &str) -> PathBuf {
    dir().join(rel)
}
