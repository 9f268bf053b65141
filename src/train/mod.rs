//! Parameter-efficient training: only the adapters, neck, decoder
//! and projector train.
//!
//! Read top down: [`request`] resolves what the user asks (flags, the
//! official YAML config in [`yaml_config`], the official defaults in
//! [`recipe`]) into [`recipe::TrainOptions`]; [`initial`] makes the starting
//! model; [`trainer`] runs the loop (steps with [`adam`] in the arithmetic of
//! [`precision`], epochs recorded in [`history`]) and writes and resumes
//! [`checkpoint`]s in detris's or the official format.

pub mod adam;
pub mod bad_samples;
pub mod checkpoint;
pub mod history;
pub mod initial;
pub mod precision;
pub mod recipe;
pub mod request;
pub mod run_folder;
pub mod step;
pub mod trainer;
pub mod yaml_config;
