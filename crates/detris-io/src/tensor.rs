//! Plain typed tensor buffers: what the readers hand over to the model crate.
//!
//! A [`RawTensor`] is a dense, row-major (C-contiguous), little-endian buffer
//! with a dtype and a shape. Readers materialise strided views into this form,
//! so consumers never deal with strides or storages.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Element types that appear in the files detris reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    U8,
    I8,
    I16,
    I32,
    I64,
    F16,
    BF16,
    F32,
    F64,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// The safetensors / numpy-style short name (`F32`, `I64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::Bool => "BOOL",
            DType::U8 => "U8",
            DType::I8 => "I8",
            DType::I16 => "I16",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F32 => "F32",
            DType::F64 => "F64",
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a tensor's bytes live: owned, or a range of a shared memory map.
#[derive(Clone)]
pub enum Bytes {
    Owned(Vec<u8>),
    Mapped(Arc<memmap2::Mmap>, std::ops::Range<usize>),
}

impl Bytes {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m, r) => &m[r.clone()],
        }
    }
}

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.as_slice().len())
    }
}

/// A dense row-major little-endian tensor.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    bytes: Bytes,
}

/// Tensors by name, in name order.
pub type TensorMap = BTreeMap<String, RawTensor>;

impl RawTensor {
    /// Builds a tensor; `None` if the byte count does not match dtype × shape
    /// (or the element count overflows).
    pub fn new(dtype: DType, shape: Vec<usize>, bytes: Bytes) -> Option<Self> {
        let n = numel_checked(&shape)?;
        if n.checked_mul(dtype.size())? != bytes.as_slice().len() {
            return None;
        }
        Some(RawTensor { dtype, shape, bytes })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Option<Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor::new(DType::F32, shape, Bytes::Owned(bytes))
    }

    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Option<Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor::new(DType::F64, shape, Bytes::Owned(bytes))
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Option<Self> {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        RawTensor::new(DType::I64, shape, Bytes::Owned(bytes))
    }

    pub fn from_u8(shape: Vec<usize>, values: Vec<u8>) -> Option<Self> {
        RawTensor::new(DType::U8, shape, Bytes::Owned(values))
    }

    /// Raw little-endian bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values widened (or narrowed) to f64. Exact for every dtype but
    /// I64 beyond 2^53.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        let b = self.bytes();
        match self.dtype {
            DType::Bool | DType::U8 => b.iter().map(|&v| v as f64).collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as f64).collect(),
            DType::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]]) as f64).collect(),
            DType::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            DType::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            DType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            DType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
            DType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
            DType::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        }
    }

    /// Values as f32 (f16/bf16 widen exactly; f64 rounds).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self.bytes().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => self.to_f64_vec().into_iter().map(|v| v as f32).collect(),
        }
    }

    /// Values as i64 (floats truncate).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match self.dtype {
            DType::I64 => self.bytes().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
            _ => self.to_f64_vec().into_iter().map(|v| v as i64).collect(),
        }
    }

    /// The same values in another float dtype (f16 → f32 is exact).
    pub fn to_dtype(&self, dtype: DType) -> RawTensor {
        if dtype == self.dtype {
            return self.clone();
        }
        let v = self.to_f64_vec();
        let bytes: Vec<u8> = match dtype {
            DType::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
            DType::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            DType::F16 => v.iter().flat_map(|x| half::f16::from_f64(*x).to_le_bytes()).collect(),
            DType::BF16 => v.iter().flat_map(|x| half::bf16::from_f64(*x).to_le_bytes()).collect(),
            DType::I64 => v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
            DType::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
            DType::I16 => v.iter().flat_map(|x| (*x as i16).to_le_bytes()).collect(),
            DType::I8 => v.iter().map(|x| *x as i8 as u8).collect(),
            DType::U8 => v.iter().map(|x| *x as u8).collect(),
            DType::Bool => v.iter().map(|x| (*x != 0.0) as u8).collect(),
        };
        RawTensor { dtype, shape: self.shape.clone(), bytes: Bytes::Owned(bytes) }
    }
}

/// Product of the dimensions, `None` on overflow.
pub fn numel_checked(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_byte_count_mismatch_and_overflow() {
        assert!(RawTensor::new(DType::F32, vec![2, 2], Bytes::Owned(vec![0; 15])).is_none());
        assert!(RawTensor::new(DType::F32, vec![usize::MAX, 2], Bytes::Owned(vec![])).is_none());
        assert!(RawTensor::new(DType::F32, vec![2, 2], Bytes::Owned(vec![0; 16])).is_some());
    }

    #[test]
    fn f16_widens_exactly() {
        let h = [half::f16::from_f32(0.1), half::f16::from_f32(-3.5)];
        let bytes = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let t = RawTensor::new(DType::F16, vec![2], Bytes::Owned(bytes)).unwrap();
        assert_eq!(t.to_f32_vec(), vec![h[0].to_f32(), -3.5]);
    }
}
