//! One file per subcommand: argument parsing and printing only; the work is
//! in the library modules.

pub mod bench;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod export;
pub mod http_client;
pub mod model_args;
pub mod segment;
pub mod serve;
pub mod train;

/// Bad input from the user (exit 2) versus a failure while working (exit 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(msg.into()))
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<UsageError>().is_some() {
        2
    } else {
        1
    }
}
