//! `load_torchscript` (f16 widened to f32, as detris reads CLIP) on arbitrary
//! file contents.
#![no_main]

#[path = "common.rs"]
mod common;

use detris_io::torch_file::load_torchscript;
use detris_io::DType;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::write("clip.pt", data);
    match load_torchscript(&path, true) {
        Ok(tensors) => {
            common::touch(&tensors);
            assert!(tensors.values().all(|t| t.dtype != DType::F16), "f16 left after widening");
        }
        Err(e) => common::assert_names(&e.to_string(), &path),
    }
});
