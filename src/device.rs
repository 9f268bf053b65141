//! Devices and precisions: parsing the options, and the few libtorch
//! settings that tch does not wrap (the autocast dtype, CUDA memory in use).
//!
//! Those two are looked up at run time (`dlsym`) rather than linked, so a
//! libtorch without them gives a clear error instead of a binary that will
//! not start.

use std::ffi::{c_void, CStr};

use anyhow::{bail, Result};
use tch::{Device, Kind};

/// `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available). Asking for CUDA
/// where there is none is an error, not a crash at the first tensor.
pub fn parse_device(s: &str) -> Result<Device> {
    let device = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        "auto" => Device::cuda_if_available(),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("unknown device `{other}`: use cpu, cuda, cuda:N or auto"),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count() as usize;
        if count == 0 {
            bail!(
                "device `{s}`: no CUDA device is usable (this binary {} built with the `cuda` feature; \
                 a GPU, its driver and libtorch's CUDA libraries are needed)",
                if cfg!(feature = "cuda") { "was" } else { "was not" }
            );
        }
        if n >= count {
            bail!("device `{s}`: there are only {count} CUDA device(s), cuda:0 to cuda:{}", count - 1);
        }
        // f32 on CUDA means f32: libtorch lets cuDNN convolutions round
        // their inputs to TF32 (10-bit mantissa) by default, which moves the
        // logits by ~1e-3. Speed comes from asking for bf16 or f16 instead.
        set_cudnn_tf32(false)?;
    }
    Ok(device)
}

/// `f32`, `f16` or `bf16`.
pub fn precision_kind(p: &str) -> Result<Kind> {
    Ok(match p {
        "f32" => Kind::Float,
        "f16" => Kind::Half,
        "bf16" => Kind::BFloat16,
        other => bail!("unknown precision `{other}`: use f32, f16 or bf16"),
    })
}

/// The inference precision for a device: half precisions only on CUDA (on
/// CPUs without native bf16/f16 arithmetic they are slower than f32).
pub fn inference_kind(precision: &str, device: Device) -> Result<Kind> {
    let kind = precision_kind(precision)?;
    if kind != Kind::Float && device == Device::Cpu {
        bail!("--precision {precision} needs a CUDA device (on CPU detris runs in f32)");
    }
    Ok(kind)
}

fn symbol(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT only reads the loaded libraries' tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// c10's numbering of the scalar types (c10/core/ScalarType.h).
fn scalar_type(kind: Kind) -> Result<i8> {
    Ok(match kind {
        Kind::Half => 5,
        Kind::Float => 6,
        Kind::BFloat16 => 15,
        other => bail!("autocast cannot compute in {other:?}"),
    })
}

const DEVICE_TYPE_CUDA: i8 = 1;

// at::autocast::{set,get}_autocast_dtype(c10::DeviceType, c10::ScalarType):
// both enums are int8_t, so the C++ calls are plain C calls on int8 values.
const SET_AUTOCAST_DTYPE: &CStr = c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const GET_AUTOCAST_DTYPE: &CStr = c"_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE";

/// Sets the dtype that CUDA autocast (`tch::autocast`) computes in. tch only
/// switches autocast on and off, and libtorch's default is f16, so without
/// this a bf16 run would silently compute in f16.
pub fn set_cuda_autocast_dtype(kind: Kind) -> Result<()> {
    let code = scalar_type(kind)?;
    let Some(f) = symbol(SET_AUTOCAST_DTYPE) else {
        bail!("this libtorch has no at::autocast::set_autocast_dtype (detris needs libtorch 2.11)")
    };
    // SAFETY: the symbol's C++ signature is void(int8_t, int8_t), see above.
    let f: extern "C" fn(i8, i8) = unsafe { std::mem::transmute(f) };
    f(DEVICE_TYPE_CUDA, code);
    Ok(())
}

/// The dtype CUDA autocast computes in now.
pub fn cuda_autocast_dtype() -> Result<Kind> {
    let Some(f) = symbol(GET_AUTOCAST_DTYPE) else {
        bail!("this libtorch has no at::autocast::get_autocast_dtype (detris needs libtorch 2.11)")
    };
    // SAFETY: the symbol's C++ signature is int8_t(int8_t), see above.
    let f: extern "C" fn(i8) -> i8 = unsafe { std::mem::transmute(f) };
    Ok(match f(DEVICE_TYPE_CUDA) {
        5 => Kind::Half,
        6 => Kind::Float,
        15 => Kind::BFloat16,
        other => bail!("unexpected autocast dtype code {other}"),
    })
}

// at::globalContext() and two of its members; a member function takes the
// object as its first argument. allowTF32CuDNN's argument is a
// std::optional<Float32Op> (an int and a flag, 8 bytes, one register): 0 is
// std::nullopt.
const GLOBAL_CONTEXT: &CStr = c"_ZN2at13globalContextEv";
const SET_ALLOW_TF32_CUDNN: &CStr = c"_ZN2at7Context17setAllowTF32CuDNNEb";
const ALLOW_TF32_CUDNN: &CStr = c"_ZNK2at7Context14allowTF32CuDNNESt8optionalINS_9Float32OpEE";

fn global_context() -> Result<*mut c_void> {
    let Some(f) = symbol(GLOBAL_CONTEXT) else { bail!("this libtorch has no at::globalContext") };
    // SAFETY: at::Context& at::globalContext().
    let f: extern "C" fn() -> *mut c_void = unsafe { std::mem::transmute(f) };
    Ok(f())
}

/// Whether cuDNN convolutions on f32 tensors may compute in TF32.
pub fn set_cudnn_tf32(allowed: bool) -> Result<()> {
    let ctx = global_context()?;
    let Some(f) = symbol(SET_ALLOW_TF32_CUDNN) else { bail!("this libtorch has no at::Context::setAllowTF32CuDNN") };
    // SAFETY: void at::Context::setAllowTF32CuDNN(bool), `this` first.
    let f: extern "C" fn(*mut c_void, bool) = unsafe { std::mem::transmute(f) };
    f(ctx, allowed);
    Ok(())
}

pub fn cudnn_tf32() -> Result<bool> {
    let ctx = global_context()?;
    let Some(f) = symbol(ALLOW_TF32_CUDNN) else { bail!("this libtorch has no at::Context::allowTF32CuDNN") };
    // SAFETY: bool at::Context::allowTF32CuDNN(std::optional<Float32Op>) const, `this` first.
    let f: extern "C" fn(*mut c_void, u64) -> bool = unsafe { std::mem::transmute(f) };
    Ok(f(ctx, 0))
}

/// Bytes of the current CUDA device's memory in use by every process
/// (`cudaMemGetInfo`: total − free), or None without a CUDA runtime. In a
/// process of its own, the growth of this over a run is what libtorch's
/// caching allocator reserved at its peak (it keeps what it took), plus
/// cuDNN and cuBLAS workspaces: the memory a user sees taken.
pub fn cuda_memory_in_use() -> Option<u64> {
    let f = symbol(c"cudaMemGetInfo")?;
    // SAFETY: cudaError_t cudaMemGetInfo(size_t *free, size_t *total).
    let f: extern "C" fn(*mut usize, *mut usize) -> i32 = unsafe { std::mem::transmute(f) };
    let (mut free, mut total) = (0usize, 0usize);
    (f(&mut free, &mut total) == 0).then(|| (total - free) as u64)
}

/// Peak resident set size of this process (Linux `VmHWM`), KiB; None where
/// `/proc/self/status` does not say.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autocast_dtype_is_set_and_read_back() {
        let before = cuda_autocast_dtype().unwrap();
        assert_eq!(before, Kind::Half, "libtorch's default CUDA autocast dtype");
        set_cuda_autocast_dtype(Kind::BFloat16).unwrap();
        assert_eq!(cuda_autocast_dtype().unwrap(), Kind::BFloat16);
        set_cuda_autocast_dtype(before).unwrap();
        assert_eq!(cuda_autocast_dtype().unwrap(), Kind::Half);
        assert!(set_cuda_autocast_dtype(Kind::Int64).is_err());
    }

    #[test]
    fn cudnn_tf32_is_switched_and_read_back() {
        assert!(cudnn_tf32().unwrap(), "libtorch's default lets cuDNN use TF32");
        set_cudnn_tf32(false).unwrap();
        assert!(!cudnn_tf32().unwrap());
        set_cudnn_tf32(true).unwrap();
        assert!(cudnn_tf32().unwrap());
    }

    #[test]
    fn bad_devices_and_precisions_are_named() {
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("`gpu`"), "{e}");
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA device"), "{e}");
        }
        assert!(precision_kind("fp8").unwrap_err().to_string().contains("`fp8`"));
        assert!(inference_kind("bf16", Device::Cpu).unwrap_err().to_string().contains("CUDA"));
        assert_eq!(inference_kind("f32", Device::Cpu).unwrap(), Kind::Float);
    }
}
