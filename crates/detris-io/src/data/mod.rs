//! Datasets: the REFER download layout, the prepared `anns/` + `masks/` layout
//! the official code trains on, the JSON Lines manifest of one's own data, COCO
//! mask rasterisation, the split table, and the synthetic data and batch loader
//! built on top of them.
//!
//! One data model, two sources: [`source::RefSource`] is a prepared split or a
//! manifest; [`loader`], [`holdout`] and [`check`] work on it alike.

pub mod check;
pub mod coco_mask;
pub mod holdout;
pub mod loader;
pub mod manifest;
pub mod prepared;
pub mod refer;
pub mod source;
pub mod splits;
pub mod synth;
