//! DETRIS, one small file per module of the paper; the key
//! prefix of each is in the module map of `docs/architecture.md`.
//!
//! data flow: ids → [`clip_text`] (+ [`text_adapter`]) → words, sentence;
//! image → [`dinov2`] (+ [`dense_aligner`], sees the words) → 3 taps →
//! [`neck`] → [`decoder`] → [`projector`] → logits.

pub mod clip_text;
pub mod decoder;
pub mod dense_aligner;
pub mod detris;
pub mod dinov2;
pub mod init;
pub mod layers;
pub mod neck;
pub mod packed_linear;
pub mod packing;
pub mod projector;
pub mod text_adapter;

pub use detris::Detris;
pub use layers::{Ctx, Lever, Levers, Trace};
