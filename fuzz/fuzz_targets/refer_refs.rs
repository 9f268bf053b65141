//! The REFER reader with a fuzzed `refs(unc).p` beside the fixture's
//! `instances.json`: never a panic; errors name the file; every ref it
//! accepts has its annotation, image, box and mask.
#![no_main]

#[path = "common.rs"]
mod common;
#[path = "refer_common.rs"]
mod refer_common;

use libfuzzer_sys::fuzz_target;

const INSTANCES: &[u8] = include_bytes!("../seeds/refer_instances/instances.json");

fuzz_target!(|data: &[u8]| {
    refer_common::load_and_walk(data, INSTANCES);
});
