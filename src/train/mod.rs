//! Parameter-efficient training: only the adapters, neck, decoder and
//! projector train.

pub mod adam;
pub mod checkpoint;
pub mod data;
pub mod official_order;
pub mod official_pth;
pub mod official_yaml;
pub mod recipe;
pub mod trainer;
