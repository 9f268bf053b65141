//! Parameter-efficient training (spec §9): only the adapters, neck, decoder
//! and projector train.

pub mod adam;
pub mod checkpoint;
pub mod data;
pub mod official_yaml;
pub mod precision;
pub mod trainer;
