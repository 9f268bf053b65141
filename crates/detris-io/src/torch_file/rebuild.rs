//! Turns torch's tensor records (`_rebuild_tensor_v2(storage, offset, size,
//! stride, ...)` with a persistent-id storage) into dense [`RawTensor`]s,
//! checking every number against the storage it reads.

use crate::pickle::{Global, Value};
use crate::tensor::{numel_checked, Bytes, DType, RawTensor};

type Step<T> = std::result::Result<T, String>;

/// An expanded (stride-0) view is materialised only while it stays below
/// this size or the size of its storage.
const MAX_EXPANDED_BYTES: usize = 256 << 20;

/// Where a pickle's storages live (zip entries, legacy file ranges).
pub(super) trait Storages {
    /// All bytes of storage `key`.
    fn storage(&mut self, key: &str) -> Step<Bytes>;
}

/// The element type of a `torch.<Name>Storage` class.
pub(super) fn storage_dtype(class: &Global) -> Option<DType> {
    if class.module != "torch" {
        return None;
    }
    Some(match class.name.as_str() {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        "ShortStorage" => DType::I16,
        "CharStorage" => DType::I8,
        "ByteStorage" => DType::U8,
        "BoolStorage" => DType::Bool,
        "BFloat16Storage" => DType::BF16,
        _ => return None,
    })
}

/// What a persistent id `('storage', torch.XStorage, key, location, numel
/// [, view_metadata])` says.
pub(super) struct StorageRef {
    pub dtype: DType,
    pub key: String,
    /// Elements the storage holds (for a legacy view: the view's length).
    pub numel: usize,
    /// Elements skipped at the start of the stored bytes (legacy views).
    pub base: usize,
}

impl StorageRef {
    pub fn parse(pid: &Value) -> Step<StorageRef> {
        let Value::PersistentId(inner) = pid else {
            return Err(format!("its storage is {}, not a persistent id", pid.kind()));
        };
        let fields = inner.as_list().unwrap_or_default();
        let (Some(tag), Some(class), Some(key), Some(numel)) =
            (fields.first(), fields.get(1), fields.get(2), fields.get(4))
        else {
            return Err("its persistent id is not ('storage', type, key, location, size)".into());
        };
        if tag.as_str() != Some("storage") {
            return Err(format!("its persistent id is tagged {tag:?}, not 'storage'"));
        }
        let dtype = class
            .as_global()
            .and_then(storage_dtype)
            .ok_or_else(|| format!("its storage type is {}, not a torch.*Storage class", class.kind()))?;
        let key = match key {
            Value::Int(i) => i.to_string(),
            other => other.as_str().ok_or_else(|| format!("its storage key is {}", other.kind()))?.to_string(),
        };
        let numel = non_negative(numel, "storage size")?;
        let mut storage = StorageRef { dtype, key, numel, base: 0 };
        // Legacy files: (view_key, offset, view_size) cuts a view out of the root storage.
        if let Some(view) = fields.get(5).filter(|v| !v.is_none()) {
            let (Some(offset), Some(size)) =
                (view.as_list().and_then(|v| v.get(1)), view.as_list().and_then(|v| v.get(2)))
            else {
                return Err("its storage view is not (key, offset, size)".into());
            };
            let (offset, size) =
                (non_negative(offset, "storage view offset")?, non_negative(size, "storage view size")?);
            if offset.checked_add(size).is_none_or(|end| end > numel) {
                return Err(format!(
                    "its storage view [{offset}, +{size}) lies outside storage `{}` of {numel} elements",
                    storage.key
                ));
            }
            storage.base = offset;
            storage.numel = size;
        }
        Ok(storage)
    }
}

/// The tensor inside `_rebuild_parameter(tensor, ...)` wrappers, if `v` is a
/// tensor record at all.
fn tensor_args(v: &Value) -> Option<&[Value]> {
    let obj = v.as_object()?;
    if obj.callable.module != "torch._utils" {
        return None;
    }
    match obj.callable.name.as_str() {
        "_rebuild_tensor_v2" | "_rebuild_tensor" => Some(&obj.args),
        "_rebuild_parameter" | "_rebuild_parameter_with_state" => obj.args.first().and_then(tensor_args),
        _ => None,
    }
}

/// True when `v` is a tensor record (reading it would read a storage).
pub(super) fn is_tensor(v: &Value) -> bool {
    tensor_args(v).is_some()
}

/// True when `v` holds a tensor anywhere inside it.
pub(super) fn contains_tensor(v: &Value) -> bool {
    if is_tensor(v) {
        return true;
    }
    match v {
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => items.iter().any(contains_tensor),
        Value::Dict(pairs) => pairs.iter().any(|(k, v)| contains_tensor(k) || contains_tensor(v)),
        Value::Object(obj) => obj.args.iter().any(contains_tensor) || obj.state.as_ref().is_some_and(contains_tensor),
        Value::PersistentId(_) => true,
        _ => false,
    }
}

/// Materialises the tensor record `v` (Ok(None) when `v` is not one).
pub(super) fn tensor(v: &Value, storages: &mut dyn Storages) -> Step<Option<RawTensor>> {
    let Some(args) = tensor_args(v) else { return Ok(None) };
    let [storage, offset, size, stride, ..] = args else {
        return Err("`_rebuild_tensor` has fewer than 4 arguments".into());
    };
    let storage = StorageRef::parse(storage)?;
    let offset = non_negative(offset, "storage offset")?;
    let size = dims(size, "size")?;
    let stride = dims(stride, "stride")?;
    if size.len() != stride.len() {
        return Err(format!("its size {size:?} and stride {stride:?} differ in length"));
    }
    let bytes = storages.storage(&storage.key)?;
    view(&bytes, &storage, offset, &size, &stride).map(Some)
}

fn non_negative(v: &Value, what: &str) -> Step<usize> {
    match v {
        Value::Int(i) => usize::try_from(*i).map_err(|_| format!("its {what} is {i}, which is negative")),
        Value::BigInt(_) => Err(format!("its {what} is an integer beyond 64 bits")),
        other => Err(format!("its {what} is {}, not an int", other.kind())),
    }
}

fn dims(v: &Value, what: &str) -> Step<Vec<usize>> {
    let items = v.as_list().ok_or_else(|| format!("its {what} is {}, not a tuple", v.kind()))?;
    items.iter().map(|d| non_negative(d, what)).collect()
}

/// Cuts the view (offset, size, stride) out of a storage as a dense
/// row-major tensor: zero-copy when the view is contiguous and the storage
/// is memory-mapped.
fn view(bytes: &Bytes, storage: &StorageRef, offset: usize, size: &[usize], stride: &[usize]) -> Step<RawTensor> {
    let es = storage.dtype.size();
    let key = &storage.key;
    let declared = storage.base.checked_add(storage.numel).and_then(|n| n.checked_mul(es));
    let held = bytes.as_slice().len();
    if declared.is_none_or(|d| d > held) {
        return Err(format!(
            "storage `{key}` holds {held} bytes, fewer than the {} {} elements its persistent id declares",
            storage.numel, storage.dtype
        ));
    }
    let numel = numel_checked(size).ok_or_else(|| format!("its size {size:?} overflows"))?;
    if numel == 0 {
        return RawTensor::new(storage.dtype, size.to_vec(), Bytes::Owned(Vec::new()))
            .ok_or_else(|| "an empty tensor could not be built".to_string());
    }
    // The last element the view reads; every dimension is ≥ 1 here.
    let mut last = offset;
    for (&d, &s) in size.iter().zip(stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|step| last.checked_add(step))
            .ok_or_else(|| format!("its view (offset {offset}, size {size:?}, stride {stride:?}) overflows"))?;
    }
    if last >= storage.numel {
        return Err(format!(
            "its view (offset {offset}, size {size:?}, stride {stride:?}) reaches element {last} of storage `{key}`, \
             which holds only {} elements",
            storage.numel
        ));
    }
    let out_len = numel.checked_mul(es).ok_or_else(|| format!("its size {size:?} overflows"))?;
    if out_len > storage.numel * es && out_len > MAX_EXPANDED_BYTES {
        return Err(format!(
            "its view expands {} storage elements to {numel}; detris refuses expanded views this large",
            storage.numel
        ));
    }
    let start = (storage.base + offset) * es;
    let out = if is_contiguous(size, stride) {
        sub_bytes(bytes, start..start + out_len)?
    } else {
        Bytes::Owned(gather(bytes.as_slice(), start, es, size, stride, out_len)?)
    };
    RawTensor::new(storage.dtype, size.to_vec(), out).ok_or_else(|| "its byte count does not match its shape".into())
}

fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1usize;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

fn sub_bytes(bytes: &Bytes, range: std::ops::Range<usize>) -> Step<Bytes> {
    let outside = || format!("byte range {range:?} lies outside its storage");
    match bytes {
        Bytes::Mapped(map, r) => {
            let (start, end) = (r.start + range.start, r.start + range.end);
            if end > r.end {
                return Err(outside());
            }
            Ok(Bytes::Mapped(map.clone(), start..end))
        }
        Bytes::Owned(v) => Ok(Bytes::Owned(v.get(range.clone()).ok_or_else(outside)?.to_vec())),
    }
}

/// Copies a strided view element by element (bounds were checked by the caller;
/// `get` keeps it panic-free anyway).
fn gather(src: &[u8], start: usize, es: usize, size: &[usize], stride: &[usize], out_len: usize) -> Step<Vec<u8>> {
    let mut out = Vec::with_capacity(out_len);
    let mut index = vec![0usize; size.len()];
    let mut pos = start;
    loop {
        out.extend_from_slice(src.get(pos..pos + es).ok_or("a strided view reads outside its storage")?);
        // Odometer over the dimensions, last fastest.
        let mut dim = size.len();
        loop {
            if dim == 0 {
                return Ok(out);
            }
            dim -= 1;
            if index[dim] + 1 < size[dim] {
                index[dim] += 1;
                pos += stride[dim] * es;
                break;
            }
            // Back to the start of this dimension (never steps past the view).
            pos -= index[dim] * stride[dim] * es;
            index[dim] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(numel: usize) -> StorageRef {
        StorageRef { dtype: DType::I16, key: "0".into(), numel, base: 0 }
    }

    fn owned(values: &[i16]) -> Bytes {
        Bytes::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    fn values(t: &RawTensor) -> Vec<i64> {
        t.to_i64_vec()
    }

    #[test]
    fn strided_views_match_torch_indexing() {
        let data: Vec<i16> = (0..12).collect();
        let b = owned(&data);
        // x = arange(12).view(3, 4); x.t() is size (4, 3), stride (1, 4).
        let t = view(&b, &storage(12), 0, &[4, 3], &[1, 4]).unwrap();
        assert_eq!(values(&t), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]);
        // x[1:, 1:3]: offset 5, size (2, 2), stride (4, 1).
        let t = view(&b, &storage(12), 5, &[2, 2], &[4, 1]).unwrap();
        assert_eq!(values(&t), [5, 6, 9, 10]);
        // x[0].expand(2, 4): stride 0.
        let t = view(&b, &storage(12), 0, &[2, 4], &[0, 1]).unwrap();
        assert_eq!(values(&t), [0, 1, 2, 3, 0, 1, 2, 3]);
        // A scalar and an empty tensor.
        assert_eq!(values(&view(&b, &storage(12), 7, &[], &[]).unwrap()), [7]);
        assert_eq!(view(&b, &storage(12), 0, &[0, 4], &[4, 1]).unwrap().numel(), 0);
        // A size-1 dim may carry any stride, even one that overflows if scaled.
        let t = view(&b, &storage(12), 0, &[1, 3], &[usize::MAX, 2]).unwrap();
        assert_eq!(values(&t), [0, 2, 4]);
        // Contiguous with size-1 dims of any stride.
        let t = view(&b, &storage(12), 2, &[1, 3, 1], &[99, 1, 7]).unwrap();
        assert_eq!(values(&t), [2, 3, 4]);
    }

    #[test]
    fn views_outside_their_storage_are_errors() {
        let b = owned(&[0; 12]);
        let msg = view(&b, &storage(12), 1, &[3, 4], &[4, 1]).unwrap_err();
        assert!(msg.contains("reaches element 12") && msg.contains("holds only 12"), "{msg}");
        assert!(view(&b, &storage(13), 0, &[13], &[1]).unwrap_err().contains("fewer than"));
        assert!(view(&b, &storage(12), 0, &[usize::MAX, 2], &[1, 1]).unwrap_err().contains("overflows"));
        assert!(view(&b, &storage(12), 0, &[2, 2], &[usize::MAX, 1]).unwrap_err().contains("overflows"));
        let msg = view(&b, &storage(12), 0, &[1 << 40], &[0]).unwrap_err();
        assert!(msg.contains("expanded views"), "{msg}");
    }
}
