//! The REFER reader with a fuzzed `instances.json` beside the fixture's
//! `refs(unc).p`: image sizes, boxes and segmentations (polygons, boxes,
//! RLE) from the file, rasterised for every ref.
#![no_main]

#[path = "common.rs"]
mod common;
#[path = "refer_common.rs"]
mod refer_common;

use libfuzzer_sys::fuzz_target;

const REFS: &[u8] = include_bytes!("../seeds/refer_refs/refs_unc.p");

fuzz_target!(|data: &[u8]| {
    refer_common::load_and_walk(REFS, data);
});
