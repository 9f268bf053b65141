//! Parameter-efficient training (spec §9): only the adapters, neck, decoder
//! and projector train.

pub mod adam;
