//! `load_checkpoint` on arbitrary file contents: the container is recognised
//! from the bytes (torch.save zip, legacy pickles, safetensors). Never a panic;
//! an error names the file; tensors read back whole.
#![no_main]

#[path = "common.rs"]
mod common;

use detris_io::torch_file::load_checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::write("checkpoint.pth", data);
    match load_checkpoint(&path) {
        Ok(ckpt) => {
            common::touch(&ckpt.tensors);
            assert!(!ckpt.tensors.is_empty());
        }
        Err(e) => common::assert_names(&e.to_string(), &path),
    }
});
