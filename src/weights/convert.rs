//! Plain tensors ([`RawTensor`], from the detris-io readers) to tch tensors and back.

use anyhow::{bail, Context, Result};
use detris_io::tensor::{Bytes, DType, RawTensor};
use tch::{Kind, Tensor};

pub fn kind_of(dtype: DType) -> Result<Kind> {
    Ok(match dtype {
        DType::F16 => Kind::Half,
        DType::BF16 => Kind::BFloat16,
        DType::F32 => Kind::Float,
        DType::F64 => Kind::Double,
        DType::I64 => Kind::Int64,
        DType::I32 => Kind::Int,
        DType::I16 => Kind::Int16,
        DType::I8 => Kind::Int8,
        DType::U8 => Kind::Uint8,
        DType::Bool => Kind::Bool,
    })
}

/// A plain tensor as a tch tensor on the CPU (one copy).
pub fn to_tch(t: &RawTensor) -> Result<Tensor> {
    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(t.bytes(), &shape, kind_of(t.dtype)?)?)
}

/// A tch tensor as a plain tensor (f32, f64, f16, bf16, i64, u8 or bool).
pub fn from_tch(t: &Tensor) -> Result<RawTensor> {
    let dtype = match t.kind() {
        Kind::Half => DType::F16,
        Kind::BFloat16 => DType::BF16,
        Kind::Float => DType::F32,
        Kind::Double => DType::F64,
        Kind::Int64 => DType::I64,
        Kind::Uint8 => DType::U8,
        Kind::Bool => DType::Bool,
        k => bail!("cannot export a tensor of kind {k:?}"),
    };
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut bytes = vec![0u8; numel * dtype.size()];
    t.f_copy_data_u8(&mut bytes, numel)?;
    RawTensor::new(dtype, t.size().iter().map(|&d| d as usize).collect(), Bytes::Owned(bytes))
        .context("tensor byte count mismatch")
}
