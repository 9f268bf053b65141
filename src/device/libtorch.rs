//! The few libtorch and CUDA runtime calls that tch does not wrap: autocast
//! on CPU and its dtype, cuDNN's TF32, CUDA memory and compute capability.
//! Every `unsafe` of the device module is here.
//!
//! The symbols are looked up at run time (`dlsym`) rather than linked, so a
//! libtorch without them gives a clear error instead of a binary that will
//! not start.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;
use std::sync::{Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind};

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

/// c10's numbering of the device types (c10/core/DeviceType.h).
fn device_type(device: Device) -> Result<i8> {
    Ok(match device {
        Device::Cpu => 0,
        Device::Cuda(_) => 1,
        other => bail!("autocast is not available on {other:?}"),
    })
}

// at::autocast's per-device-type switches. DeviceType and ScalarType are
// both int8_t enums, so the C++ functions are plain C calls on int8 values.
const SET_AUTOCAST_DTYPE: &CStr = c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE";
const GET_AUTOCAST_DTYPE: &CStr = c"_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE";
const SET_AUTOCAST_ENABLED: &CStr = c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb";
const IS_AUTOCAST_ENABLED: &CStr = c"_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE";
const INCREMENT_NESTING: &CStr = c"_ZN2at8autocast17increment_nestingEv";
const DECREMENT_NESTING: &CStr = c"_ZN2at8autocast17decrement_nestingEv";
const CLEAR_CACHE: &CStr = c"_ZN2at8autocast11clear_cacheEv";

fn autocast_fn(name: &CStr) -> Result<*mut c_void> {
    let pretty = name.to_str().unwrap_or("?");
    symbol(name).with_context(|| format!("this libtorch has no {pretty} (detris needs libtorch 2.11)"))
}

type SetDtype = extern "C" fn(i8, i8);
type SetEnabled = extern "C" fn(i8, bool);

fn set_dtype_fn() -> Result<SetDtype> {
    // SAFETY: the symbol's C++ signature is void(int8_t, int8_t), see above.
    Ok(unsafe { std::mem::transmute::<*mut c_void, SetDtype>(autocast_fn(SET_AUTOCAST_DTYPE)?) })
}

fn set_enabled_fn() -> Result<SetEnabled> {
    // SAFETY: void(int8_t, bool).
    Ok(unsafe { std::mem::transmute::<*mut c_void, SetEnabled>(autocast_fn(SET_AUTOCAST_ENABLED)?) })
}

/// Sets the dtype that autocast computes in on `device`'s type. tch only
/// switches CUDA autocast on and off, and libtorch's CUDA default is f16,
/// so without this a bf16 run would silently compute in f16.
pub fn set_autocast_dtype(device: Device, kind: Kind) -> Result<()> {
    let (dt, code) = (device_type(device)?, scalar_type(kind)?);
    set_dtype_fn()?(dt, code);
    Ok(())
}

/// The dtype autocast computes in on `device`'s type now.
pub fn autocast_dtype(device: Device) -> Result<Kind> {
    let dt = device_type(device)?;
    // SAFETY: the symbol's C++ signature is int8_t(int8_t), see above.
    let f: extern "C" fn(i8) -> i8 = unsafe { std::mem::transmute(autocast_fn(GET_AUTOCAST_DTYPE)?) };
    Ok(match f(dt) {
        5 => Kind::Half,
        6 => Kind::Float,
        15 => Kind::BFloat16,
        other => bail!("unexpected autocast dtype code {other}"),
    })
}

/// Whether autocast is on for `device`'s type (in this thread).
pub fn autocast_enabled(device: Device) -> Result<bool> {
    let dt = device_type(device)?;
    // SAFETY: bool(int8_t).
    let f: extern "C" fn(i8) -> bool = unsafe { std::mem::transmute(autocast_fn(IS_AUTOCAST_ENABLED)?) };
    Ok(f(dt))
}

/// Autocast on one device type while this guard lives, as
/// `with torch.autocast(device_type, dtype)`: the matrix products and
/// convolutions in the chosen kind, the ops libtorch keeps in f32 in f32.
/// Dropping it (also while unwinding from a panic) restores the state
/// before (on or off, dtype) and drops the cache of cast weights when the
/// outermost region ends. (`tch::autocast` only reaches CUDA, and does
/// nothing on a machine without it.)
///
/// Autocast's state is per thread, so the guard stays on the thread that
/// made it (it is not `Send`).
#[must_use = "autocast is switched off again when the guard is dropped"]
pub struct Autocast {
    device_type: i8,
    was_on: bool,
    was_dtype: i8,
    set_enabled: SetEnabled,
    set_dtype: SetDtype,
    decrement: extern "C" fn() -> i32,
    clear: extern "C" fn(),
    on_this_thread: PhantomData<*const ()>,
}

impl Autocast {
    /// Switches autocast on for `device` (CPU or CUDA) computing in `kind`.
    /// Every symbol is found before anything changes, so the restore on
    /// drop cannot fail.
    pub fn on(device: Device, kind: Kind) -> Result<Autocast> {
        let (dt, code) = (device_type(device)?, scalar_type(kind)?);
        let (was_on, was_dtype) = (autocast_enabled(device)?, scalar_type(autocast_dtype(device)?)?);
        // SAFETY: int(void) and void(void).
        let increment: extern "C" fn() -> i32 = unsafe { std::mem::transmute(autocast_fn(INCREMENT_NESTING)?) };
        let decrement: extern "C" fn() -> i32 = unsafe { std::mem::transmute(autocast_fn(DECREMENT_NESTING)?) };
        let clear: extern "C" fn() = unsafe { std::mem::transmute(autocast_fn(CLEAR_CACHE)?) };
        let guard = Autocast {
            device_type: dt,
            was_on,
            was_dtype,
            set_enabled: set_enabled_fn()?,
            set_dtype: set_dtype_fn()?,
            decrement,
            clear,
            on_this_thread: PhantomData,
        };
        (guard.set_dtype)(dt, code);
        (guard.set_enabled)(dt, true);
        increment();
        Ok(guard)
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        if (self.decrement)() == 0 {
            (self.clear)();
        }
        (self.set_enabled)(self.device_type, self.was_on);
        (self.set_dtype)(self.device_type, self.was_dtype);
    }
}

/// Runs `f` under [`Autocast`] on `device` computing in `kind`; the state
/// before is restored after, also when `f` panics.
pub fn autocast<T>(device: Device, kind: Kind, f: impl FnOnce() -> T) -> Result<T> {
    let _on = Autocast::on(device, kind)?;
    Ok(f())
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

/// Whether cuDNN convolutions on f32 tensors may compute in TF32 (a
/// process-wide libtorch setting; [`ExactF32`] switches it for a scope).
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

/// The holders of [`ExactF32`] now, and whether TF32 was allowed before the first.
static EXACT_F32: Mutex<(usize, bool)> = Mutex::new((0, true));

/// f32 means f32 while this guard lives: libtorch lets cuDNN convolutions
/// round their f32 inputs to TF32 (a 10-bit mantissa) by default, which
/// moves the logits past the parity tolerance; speed comes from asking for
/// bf16 or f16 instead. The setting is process-wide, so the guards are
/// counted: the first turns TF32 off, the last one dropped restores what
/// was there before, whatever the order (several models, several threads).
#[must_use = "TF32 comes back when the guard is dropped"]
pub struct ExactF32(());

impl ExactF32 {
    pub fn hold() -> Result<ExactF32> {
        let mut holders = EXACT_F32.lock().unwrap_or_else(PoisonError::into_inner);
        if holders.0 == 0 {
            holders.1 = cudnn_tf32()?;
            set_cudnn_tf32(false)?;
        }
        holders.0 += 1;
        Ok(ExactF32(()))
    }
}

impl Drop for ExactF32 {
    fn drop(&mut self) {
        let mut holders = EXACT_F32.lock().unwrap_or_else(PoisonError::into_inner);
        holders.0 -= 1;
        if holders.0 == 0 {
            // The symbols were found when the first guard was made.
            let _ = set_cudnn_tf32(holders.1);
        }
    }
}

/// `cudaMemGetInfo`: (free, total) bytes of the current CUDA device, or
/// None without a CUDA runtime.
pub fn cuda_mem_get_info() -> Option<(u64, u64)> {
    let f = symbol(c"cudaMemGetInfo")?;
    // SAFETY: cudaError_t cudaMemGetInfo(size_t *free, size_t *total).
    let f: extern "C" fn(*mut usize, *mut usize) -> i32 = unsafe { std::mem::transmute(f) };
    let (mut free, mut total) = (0usize, 0usize);
    (f(&mut free, &mut total) == 0).then_some((free as u64, total as u64))
}

/// The compute capability's major version of CUDA device `n`
/// (`cudaDeviceGetAttribute`), or None without a CUDA runtime.
pub fn cuda_compute_major(n: usize) -> Option<i32> {
    const COMPUTE_CAPABILITY_MAJOR: i32 = 75; // cudaDevAttrComputeCapabilityMajor
    let f = symbol(c"cudaDeviceGetAttribute")?;
    // SAFETY: cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device).
    let f: extern "C" fn(*mut i32, i32, i32) -> i32 = unsafe { std::mem::transmute(f) };
    let mut major = 0;
    (f(&mut major, COMPUTE_CAPABILITY_MAJOR, n as i32) == 0).then_some(major)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn autocast_dtype_is_set_and_read_back() {
        let cuda = Device::Cuda(0);
        let before = autocast_dtype(cuda).unwrap();
        assert_eq!(before, Kind::Half, "libtorch's default CUDA autocast dtype");
        set_autocast_dtype(cuda, Kind::BFloat16).unwrap();
        assert_eq!(autocast_dtype(cuda).unwrap(), Kind::BFloat16);
        set_autocast_dtype(cuda, before).unwrap();
        assert_eq!(autocast_dtype(cuda).unwrap(), Kind::Half);
        assert!(set_autocast_dtype(cuda, Kind::Int64).is_err());
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16, "libtorch's default CPU autocast dtype");
    }

    #[test]
    fn cpu_autocast_computes_matrix_products_in_its_dtype_and_restores_the_state() {
        let a = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([8, 3], (Kind::Float, Device::Cpu));
        let (mm, sum) = autocast(Device::Cpu, Kind::BFloat16, || {
            assert!(autocast_enabled(Device::Cpu).unwrap());
            (a.matmul(&b), a.sum(Kind::Float))
        })
        .unwrap();
        assert_eq!(mm.kind(), Kind::BFloat16, "a matrix product under CPU autocast");
        assert_eq!(sum.kind(), Kind::Float);
        assert!(!autocast_enabled(Device::Cpu).unwrap(), "switched off again after the region");
        assert_eq!(autocast_dtype(Device::Cpu).unwrap(), Kind::BFloat16);
        assert_eq!(a.matmul(&b).kind(), Kind::Float, "outside the region: f32");
        // bf16 rounds each input at 2^-9 relative; 8 products summed stay well under 5e-2 of the result.
        let exact = a.matmul(&b);
        let err = (mm.to_kind(Kind::Float) - &exact).norm().double_value(&[]) / exact.norm().double_value(&[]);
        assert!(err < 5e-2, "relative error {err}");
    }

    #[test]
    fn a_panic_under_autocast_restores_the_state_before() {
        // Autocast's state is per thread: this test's own thread, whatever runs beside it.
        let cpu = Device::Cpu;
        set_autocast_dtype(cpu, Kind::Half).unwrap();
        let outer = Autocast::on(cpu, Kind::Half).unwrap();
        let a = Tensor::randn([4, 8], (Kind::Float, cpu));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            autocast(cpu, Kind::BFloat16, || {
                assert_eq!(autocast_dtype(cpu).unwrap(), Kind::BFloat16);
                panic!("a failing forward")
            })
        }));
        assert!(panicked.is_err());
        assert!(autocast_enabled(cpu).unwrap(), "the outer region is on again");
        assert_eq!(autocast_dtype(cpu).unwrap(), Kind::Half, "with its own dtype");
        drop(outer);
        assert!(!autocast_enabled(cpu).unwrap(), "off after the outer region");
        assert_eq!(autocast_dtype(cpu).unwrap(), Kind::Half, "the dtype set before it");
        assert_eq!(a.matmul(&a.tr()).kind(), Kind::Float, "outside every region: f32");
        set_autocast_dtype(cpu, Kind::BFloat16).unwrap();
    }

    /// One test for every TF32 assertion: the setting is process-wide.
    #[test]
    fn cudnn_tf32_is_switched_and_read_back() {
        assert!(cudnn_tf32().unwrap(), "libtorch's default lets cuDNN use TF32");
        set_cudnn_tf32(false).unwrap();
        assert!(!cudnn_tf32().unwrap());
        set_cudnn_tf32(true).unwrap();
        assert!(cudnn_tf32().unwrap());
        // Exact f32 while any guard lives, in whatever order they go.
        let (first, second) = (ExactF32::hold().unwrap(), ExactF32::hold().unwrap());
        assert!(!cudnn_tf32().unwrap());
        drop(first);
        assert!(!cudnn_tf32().unwrap(), "one guard is still held");
        drop(second);
        assert!(cudnn_tf32().unwrap(), "the setting before the first guard");
        let panicked = std::panic::catch_unwind(|| {
            let _exact = ExactF32::hold().unwrap();
            panic!("a failing step")
        });
        assert!(panicked.is_err());
        assert!(cudnn_tf32().unwrap(), "restored while unwinding");
    }
}
