//! One error type for every reader: each message names the file (or input)
//! and says what is wrong with it.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The file was read but its content is wrong; `what` says how.
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
    /// Bad input that is not a file (a sentence, an option, an in-memory buffer).
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn invalid(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Invalid { path: path.as_ref().to_path_buf(), what: what.into() }
    }
    pub fn input(what: impl Into<String>) -> Self {
        Error::Input(what.into())
    }
    /// Re-attributes an in-memory error to the file it came from.
    pub fn in_file(self, path: impl AsRef<Path>) -> Self {
        match self {
            Error::Input(what) => Error::invalid(path, what),
            other => other,
        }
    }
}

/// Reads a whole file, naming it on failure.
pub fn read_file(path: impl AsRef<Path>) -> Result<Vec<u8>> {
    std::fs::read(path.as_ref()).map_err(|e| Error::io(path, e))
}
