//! Parameter-efficient training: only the adapters, neck, decoder
//! and projector train.

pub mod adam;
pub mod checkpoint;
/// The data module moved up to [`crate::data`] (evaluation reads it too); this
/// name stays for callers of `train::data`.
pub use crate::data;
pub mod official_order;
pub mod official_pth;
pub mod official_yaml;
pub mod precision;
pub mod recipe;
pub mod trainer;
