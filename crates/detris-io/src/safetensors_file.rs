//! safetensors files: read through a memory map (tensors point into it),
//! written atomically.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::{Bytes, DType, RawTensor, TensorMap};

/// Length of the little-endian u64 that precedes the JSON header.
const HEADER_LEN_BYTES: usize = 8;

/// Every tensor of a safetensors file (as [`Bytes::Mapped`] ranges of one
/// shared map) and its `__metadata__` strings. The `safetensors` crate
/// validates the header: offsets must tile the data exactly (no overlap, no
/// gap, nothing past the end), and each byte count must match dtype × shape.
pub fn read(path: &Path) -> Result<(TensorMap, BTreeMap<String, String>)> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map; the file must not be truncated while in use.
    let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?);
    let (header_len, header) = SafeTensors::read_metadata(&map)
        .map_err(|e| Error::invalid(path, format!("not a valid safetensors file: {e}")))?;
    let data_start = HEADER_LEN_BYTES + header_len;
    let mut tensors = TensorMap::new();
    for (name, info) in header.tensors() {
        let dtype = dtype_from(info.dtype).ok_or_else(|| {
            Error::invalid(path, format!("tensor `{name}` has dtype {:?}, which detris does not handle", info.dtype))
        })?;
        let (start, end) = info.data_offsets;
        let range = (data_start + start)..(data_start + end);
        let tensor = RawTensor::new(dtype, info.shape.clone(), Bytes::Mapped(map.clone(), range))
            .ok_or_else(|| Error::invalid(path, format!("tensor `{name}`: byte count does not match its shape")))?;
        tensors.insert(name, tensor);
    }
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((tensors, metadata))
}

/// Writes `tensors` (and `metadata` as `__metadata__`, when not empty) to
/// `path` atomically: `<path>.tmp` is written, synced, then renamed over
/// `path`, so a crash never leaves a half-written file under the real name.
/// Tensors are laid out by decreasing element size, so each stays aligned.
pub fn write(path: &Path, tensors: &TensorMap, metadata: &BTreeMap<String, String>) -> Result<()> {
    let mut order: Vec<(&String, &RawTensor)> = tensors.iter().collect();
    order.sort_by_key(|(name, t)| (std::cmp::Reverse(t.dtype.size()), name.as_str()));

    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut offset = 0usize;
    for (name, t) in &order {
        let end = offset + t.bytes().len();
        header.insert(
            (*name).clone(),
            serde_json::json!({ "dtype": t.dtype.name(), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).map_err(|e| Error::invalid(path, format!("header: {e}")))?;
    // Pad with spaces so the data starts 8-byte aligned, as safetensors does.
    header.resize(header.len().next_multiple_of(HEADER_LEN_BYTES), b' ');

    let tmp = tmp_path(path);
    let written = (|| -> std::io::Result<()> {
        let file = std::fs::File::create(&tmp)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &file);
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        for (_, t) in &order {
            out.write_all(t.bytes())?;
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename itself durable (best effort: not every platform can
    // sync a directory).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn dtype_from(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::BOOL => DType::Bool,
        Dtype::U8 => DType::U8,
        Dtype::I8 => DType::I8,
        Dtype::I16 => DType::I16,
        Dtype::I32 => DType::I32,
        Dtype::I64 => DType::I64,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}
