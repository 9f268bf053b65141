//! oneDNN's pre-packed products for the frozen linear layers at inference on
//! the CPU, through the C++ shim `onednn_shim.cpp` over libtorch's registered
//! operators (the ones inductor's CPU code calls):
//! - [`Packing::Bf16`]: the bf16 weight reordered once into oneDNN's blocked
//!   layout (libtorch's `linear` reorders it on every call);
//! - [`Packing::Int8`]: weights quantised once per output channel (symmetric
//!   int8), activations per tensor on each call (asymmetric uint8), products
//!   on the CPU's int8 dot-product units (AVX512-VNNI, AMX-INT8), bf16 out.
//!
//! The packed copy is taken from the weights as they are when it is made:
//! `packing::pack_frozen_linears` packs after loading, and only frozen weights.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr::NonNull;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

#[allow(improper_ctypes)]
extern "C" {
    fn detris_onednn_free(p: *mut c_void);
    fn detris_onednn_bf16_new(
        weight: *mut c_void,
        bias: *mut c_void,
        tokens: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn detris_onednn_int8_new(
        weight: *mut c_void,
        bias: *mut c_void,
        tokens: i64,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn detris_onednn_packed_free(p: *mut c_void);
    fn detris_onednn_packed_forward(
        p: *mut c_void,
        x: *mut c_void,
        epilogue: c_int,
        err: *mut *mut c_char,
    ) -> *mut c_void;
}

fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error in the oneDNN shim".into();
    }
    let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { detris_onednn_free(err as *mut c_void) };
    s
}

/// How a frozen linear layer's weight is held for oneDNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packing {
    Bf16,
    Int8,
}

/// What runs after the product inside the same oneDNN call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    None = 0,
    /// The exact (erf) GELU of `torch.nn.GELU()`.
    Gelu = 1,
}

/// A frozen `(out, in)` weight and its bias in oneDNN's packed form.
pub struct PackedLinear {
    raw: NonNull<c_void>,
    pub packing: Packing,
    pub in_features: i64,
    pub out_features: i64,
}

// The C++ object is immutable after construction; oneDNN's products only read it.
unsafe impl Send for PackedLinear {}
unsafe impl Sync for PackedLinear {}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedLinear({:?}, {} -> {})", self.packing, self.in_features, self.out_features)
    }
}

impl Drop for PackedLinear {
    fn drop(&mut self) {
        unsafe { detris_onednn_packed_free(self.raw.as_ptr()) }
    }
}

impl PackedLinear {
    /// Packs `weight (out, in)` and `bias (out)` (CPU tensors of any float
    /// kind), laid out for products of `tokens` rows (any row count stays correct).
    pub fn new(packing: Packing, weight: &Tensor, bias: Option<&Tensor>, tokens: i64) -> Result<PackedLinear> {
        let size = weight.size();
        if size.len() != 2 || weight.device() != Device::Cpu {
            bail!("packed linear: the weight must be a CPU matrix (out, in), got {size:?} on {:?}", weight.device());
        }
        let mut err = std::ptr::null_mut();
        let w = weight.as_ptr() as *mut c_void;
        let b = bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut c_void);
        let raw = unsafe {
            match packing {
                Packing::Bf16 => detris_onednn_bf16_new(w, b, tokens, &mut err),
                Packing::Int8 => detris_onednn_int8_new(w, b, tokens, &mut err),
            }
        };
        match NonNull::new(raw) {
            Some(raw) => Ok(PackedLinear { raw, packing, in_features: size[1], out_features: size[0] }),
            None => bail!("packing a {:?} linear layer {size:?}: {}", packing, take_error(err)),
        }
    }

    /// Whether [`PackedLinear::forward`] computes `x`'s product exactly as the
    /// plain layer would be used: on the CPU, in a kind the packing takes, and
    /// without a gradient to carry (oneDNN's packed products have no backward;
    /// the frozen weight needs none, an input that requires one falls back).
    pub fn accepts(&self, x: &Tensor) -> bool {
        let kind_ok = match self.packing {
            Packing::Bf16 => x.kind() == Kind::BFloat16,
            Packing::Int8 => matches!(x.kind(), Kind::BFloat16 | Kind::Float),
        };
        kind_ok && x.device() == Device::Cpu && !x.requires_grad()
    }

    /// (…, in) → (…, out) in `x`'s kind, `epilogue` applied.
    pub fn forward(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let mut err = std::ptr::null_mut();
        let out = unsafe {
            detris_onednn_packed_forward(self.raw.as_ptr(), x.as_ptr() as *mut c_void, epilogue as c_int, &mut err)
        };
        if out.is_null() {
            bail!("{self:?} on {:?} {:?}: {}", x.size(), x.kind(), take_error(err));
        }
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }
}
