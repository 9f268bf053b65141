//! detris: DETRIS referring image segmentation on libtorch (tch).
//!
//! files → `detris_io` readers → [`weights`] → [`model`] → logits →
//! `detris_io::image` post-processing → masks.

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod model;
pub mod segment;
pub mod serve;
pub mod shipped;
pub mod train;
pub mod weights;

pub use config::DetrisConfig;
pub use model::Detris;
