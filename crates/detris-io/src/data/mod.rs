//! Datasets: the REFER download layout, the prepared `anns/` + `masks/` layout
//! the official code trains on, COCO mask rasterisation, the split table, and
//! the synthetic data and batch loader built on top of them.

pub mod coco_mask;
pub mod loader;
pub mod prepared;
pub mod refer;
pub mod splits;
pub mod synth;
