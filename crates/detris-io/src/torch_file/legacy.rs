//! The legacy (pre-1.6, `_use_new_zipfile_serialization=False`) `torch.save`
//! format: five pickles in a row — the magic number, the protocol version
//! 1001, a sys-info dict, the object itself, the sorted list of storage keys —
//! then each storage as an int64 element count followed by its raw bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use memmap2::Mmap;

use super::rebuild::{storage_dtype, Storages};
use crate::pickle::{self, Value};
use crate::tensor::{Bytes, DType};

type Step<T> = std::result::Result<T, String>;

/// `0x1950a86a20f9469cfc6c` as LONG1 bytes (little-endian).
const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const PROTOCOL_VERSION: i64 = 1001;

/// True when the bytes start like a pickle (protocol 2+).
pub(super) fn looks_like_pickle(bytes: &[u8]) -> bool {
    matches!(bytes, [0x80, p, ..] if *p <= 5)
}

pub(super) struct LegacyFile {
    map: Arc<Mmap>,
    ranges: HashMap<String, Range<usize>>,
}

/// Reads the pickles and locates every storage; returns the saved object.
pub(super) fn open(map: Arc<Mmap>) -> Step<(Value, LegacyFile)> {
    let bytes: &[u8] = &map;
    let mut pos = 0;
    let mut next = |what: &str| -> Step<Value> {
        let rest = bytes.get(pos..).unwrap_or_default();
        let (value, used) = pickle::parse_prefix(rest).map_err(|e| format!("{what}: {e}"))?;
        pos += used;
        Ok(value)
    };
    if next("magic number")? != Value::BigInt(MAGIC.to_vec()) {
        return Err("a pickle, but not a torch.save file (no torch magic number)".into());
    }
    let version = next("protocol version")?;
    if version != Value::Int(PROTOCOL_VERSION) {
        return Err(format!("legacy torch.save protocol {version:?}, not {PROTOCOL_VERSION}"));
    }
    let sys_info = next("sys info")?;
    if sys_info.get("little_endian") == Some(&Value::Bool(false)) {
        return Err("a big-endian checkpoint; detris reads little-endian checkpoints only".into());
    }
    let root = next("saved object")?;
    let keys = next("storage keys")?;
    let keys = keys.as_list().ok_or("the storage key list is not a list")?;

    let mut dtypes = HashMap::new();
    collect_storage_dtypes(&root, &mut dtypes);
    let mut ranges = HashMap::new();
    for key in keys {
        let key = key.as_str().ok_or_else(|| format!("a storage key is {}", key.kind()))?;
        let dtype = dtypes.get(key).ok_or_else(|| format!("storage `{key}` is listed but no tensor uses it"))?;
        let header = bytes.get(pos..pos + 8).ok_or_else(|| format!("storage `{key}`: the file is truncated"))?;
        let numel = i64::from_le_bytes(header.try_into().map_err(|_| "unreachable: 8 bytes")?);
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(dtype.size()))
            .ok_or_else(|| format!("storage `{key}` declares {numel} elements"))?;
        let start = pos + 8;
        let end = start.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            format!("storage `{key}` needs {len} bytes at byte {start}, past the end of the file: it is truncated")
        })?;
        ranges.insert(key.to_string(), start..end);
        pos = end;
    }
    Ok((root, LegacyFile { map, ranges }))
}

/// Storage key → element type, from every persistent id in the object.
fn collect_storage_dtypes(v: &Value, out: &mut HashMap<String, DType>) {
    match v {
        Value::PersistentId(pid) => {
            if let Some([_, class, key, ..]) = pid.as_list() {
                if let (Some(dtype), Some(key)) = (class.as_global().and_then(storage_dtype), key.as_str()) {
                    out.insert(key.to_string(), dtype);
                }
            }
        }
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => {
            items.iter().for_each(|i| collect_storage_dtypes(i, out));
        }
        Value::Dict(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_storage_dtypes(k, out);
            collect_storage_dtypes(v, out);
        }),
        Value::Object(obj) => {
            obj.args.iter().for_each(|a| collect_storage_dtypes(a, out));
            if let Some(s) = &obj.state {
                collect_storage_dtypes(s, out);
            }
        }
        _ => {}
    }
}

impl Storages for LegacyFile {
    fn storage(&mut self, key: &str) -> Step<Bytes> {
        let range = self
            .ranges
            .get(key)
            .ok_or_else(|| format!("it refers to storage `{key}`, which the file does not hold"))?;
        Ok(Bytes::Mapped(self.map.clone(), range.clone()))
    }
}
