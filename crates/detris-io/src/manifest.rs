//! The JSON Lines manifest of `detris segment --manifest` and of training on one's own data.
//! It lives in [`crate::data::manifest`] (the loader reads it as a data source); this door
//! keeps the older path.

pub use crate::data::manifest::*;
