//! detris-io: everything detris reads and writes that does not need libtorch,
//! so that it builds, tests and fuzzes fast.
//!
//! files → readers (this crate) → plain tensors → model (the `detris` crate).

pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fixtures;
pub mod tensor;

// Checkpoints: allow-listed unpickler, .pth zip / legacy containers,
// TorchScript archives, safetensors.
pub mod pickle;
pub mod safetensors_file;
pub mod torch_file;

// Text and images.
pub mod image;
pub mod tokenizer;

// The body of `POST /v1/segment` (detris serve).
pub mod request;

// Datasets and metrics.
pub mod data;
// The JSON Lines manifest of `detris segment --manifest`.
pub mod manifest;
pub mod metrics;
pub mod plot;

pub use error::{Error, Result};
pub use tensor::{DType, RawTensor, TensorMap};
