//! `safetensors_file::read` on arbitrary file contents; what it accepts
//! survives `write` + `read` unchanged.
#![no_main]

#[path = "common.rs"]
mod common;

use detris_io::safetensors_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::write("weights.safetensors", data);
    match safetensors_file::read(&path) {
        Ok((tensors, metadata)) => {
            common::touch(&tensors);
            let again = common::scratch().join("again.safetensors");
            safetensors_file::write(&again, &tensors, &metadata).expect("rewriting what was read");
            let (tensors2, metadata2) = safetensors_file::read(&again).expect("reading what was written");
            assert_eq!(metadata, metadata2);
            assert_eq!(tensors.len(), tensors2.len());
            for ((n1, t1), (n2, t2)) in tensors.iter().zip(&tensors2) {
                assert_eq!(n1, n2);
                assert_eq!((t1.dtype, &t1.shape), (t2.dtype, &t2.shape), "{n1}");
                assert!(t1.bytes() == t2.bytes(), "{n1}: bytes differ after a round trip");
            }
        }
        Err(e) => common::assert_names(&e.to_string(), &path),
    }
});
