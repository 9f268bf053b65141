//! `load_checkpoint` on arbitrary file contents: the container is recognised
//! from the bytes (torch.save zip, legacy pickles, safetensors). Never a panic;
//! an error names the file; tensors read back whole. `load_tree` too: every
//! tensor record of the whole pickle (the optimizer state `--resume-from`
//! reads) is read or refused with the file's name.
#![no_main]

#[path = "common.rs"]
mod common;

use detris_io::pickle::Value;
use detris_io::torch_file::{load_checkpoint, load_tree, TensorReader};
use libfuzzer_sys::fuzz_target;

fn read_every_tensor(v: &Value, reader: &mut TensorReader, path: &std::path::Path) {
    match reader.tensor(v) {
        Ok(Some(t)) => assert_eq!(t.bytes().len(), t.numel() * t.dtype.size()),
        Ok(None) => {}
        Err(e) => common::assert_names(&e.to_string(), path),
    }
    match v {
        Value::Dict(pairs) => pairs.iter().for_each(|(_, item)| read_every_tensor(item, reader, path)),
        Value::List(items) | Value::Tuple(items) => items.iter().for_each(|item| read_every_tensor(item, reader, path)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let path = common::write("checkpoint.pth", data);
    match load_checkpoint(&path) {
        Ok(ckpt) => {
            common::touch(&ckpt.tensors);
            assert!(!ckpt.tensors.is_empty());
        }
        Err(e) => common::assert_names(&e.to_string(), &path),
    }
    match load_tree(&path) {
        Ok((root, mut reader)) => read_every_tensor(&root, &mut reader, &path),
        Err(e) => common::assert_names(&e.to_string(), &path),
    }
});
