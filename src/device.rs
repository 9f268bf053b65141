//! Devices and precisions: the option types, what `--precision auto` picks
//! from the hardware, and the few libtorch settings that tch does not wrap
//! (autocast on CPU and its dtype, cuDNN's TF32, CUDA memory in use).
//!
//! Those two are looked up at run time (`dlsym`) rather than linked, so a
//! libtorch without them gives a clear error instead of a binary that will
//! not start.

use std::collections::BTreeSet;
use std::ffi::{c_void, CStr};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

/// `--device`: `cpu`, `cuda` (= `cuda:0`), `cuda:N` or `auto` (CUDA when
/// available), parsed once by clap; [`DeviceArg::open`] checks it against
/// the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceArg {
    Cpu,
    Cuda(usize),
    Auto,
}

impl FromStr for DeviceArg {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<DeviceArg, String> {
        Ok(match s {
            "cpu" => DeviceArg::Cpu,
            "cuda" => DeviceArg::Cuda(0),
            "auto" => DeviceArg::Auto,
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => DeviceArg::Cuda(n),
                None => return Err(format!("unknown device `{other}`: use cpu, cuda, cuda:N or auto")),
            },
        })
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceArg::Auto => f.write_str("auto"),
        }
    }
}

impl From<DeviceArg> for String {
    fn from(d: DeviceArg) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceArg {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<DeviceArg, String> {
        s.parse()
    }
}

impl DeviceArg {
    /// The device, checked: asking for CUDA where there is none is an
    /// error, not a crash at the first tensor.
    pub fn open(self) -> Result<Device> {
        let device = match self {
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda(n) => Device::Cuda(n),
            DeviceArg::Auto => Device::cuda_if_available(),
        };
        if let Device::Cuda(n) = device {
            let count = tch::Cuda::device_count() as usize;
            if count == 0 {
                bail!(
                    "device `{self}`: no CUDA device is usable (this binary {} built with the `cuda` feature; \
                     a GPU, its driver and libtorch's CUDA libraries are needed)",
                    if cfg!(feature = "cuda") { "was" } else { "was not" }
                );
            }
            if n >= count {
                bail!("device `{self}`: there are only {count} CUDA device(s), cuda:0 to cuda:{}", count - 1);
            }
            // f32 on CUDA means f32: libtorch lets cuDNN convolutions round
            // their inputs to TF32 (10-bit mantissa) by default, which moves
            // the logits by ~1e-3. Speed comes from asking for bf16 or f16 instead.
            set_cudnn_tf32(false)?;
        }
        Ok(device)
    }
}

/// [`DeviceArg`] from text, opened.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceArg>().map_err(anyhow::Error::msg)?.open()
}

/// `--precision`: the arithmetic of the weights and activations (inference)
/// or of autocast (training). `auto` resolves per device, see [`auto_precision`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
    Auto,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Auto => "auto",
        })
    }
}

impl Precision {
    /// The tensor kind; `None` for `auto` (resolve it first).
    pub fn kind(self) -> Option<Kind> {
        match self {
            Precision::F32 => Some(Kind::Float),
            Precision::F16 => Some(Kind::Half),
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::Auto => None,
        }
    }

    /// `auto` as what it picks on `device` (with the reason); the others as they are.
    pub fn resolve(self, device: Device) -> Choice {
        match self {
            Precision::Auto => auto_precision(&Hardware::of(device)),
            p => Choice { precision: p, reason: "asked for".into() },
        }
    }

    /// The inference precision on `device`, `auto` resolved. f16 needs CUDA:
    /// CPUs without f16 matrix units compute it far slower than f32.
    pub fn for_inference(self, device: Device) -> Result<Precision> {
        let p = self.resolve(device).precision;
        if p == Precision::F16 && device == Device::Cpu {
            bail!("--precision f16 needs a CUDA device (on CPU use bf16 or f32)");
        }
        Ok(p)
    }
}

/// What `--precision auto` picked, and why (printed by `detris bench`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub precision: Precision,
    pub reason: String,
}

/// What [`auto_precision`] looks at.
#[derive(Clone, Debug)]
pub enum Hardware {
    /// The CPU's feature flags as `/proc/cpuinfo` names them (`avx512_bf16`, `amx_bf16`, …).
    Cpu { flags: BTreeSet<String> },
    /// A CUDA device's compute capability major version, when known.
    Cuda { major: Option<i32> },
}

impl Hardware {
    /// The hardware behind `device`, on this machine.
    pub fn of(device: Device) -> Hardware {
        match device {
            Device::Cuda(n) => Hardware::Cuda { major: cuda_compute_major(n) },
            _ => Hardware::Cpu { flags: CpuInfo::read().flags },
        }
    }
}

/// `--precision auto`: bf16 where the hardware has bf16 matrix units
/// (AMX-BF16 tiles or AVX512-BF16 dot products on a CPU, tensor cores from
/// compute capability 8 on a GPU), f32 elsewhere (bf16 there is emulated
/// and slower). A pure function of the flags, so it is tested on flag sets.
pub fn auto_precision(hw: &Hardware) -> Choice {
    let (precision, reason) = match hw {
        Hardware::Cpu { flags } if flags.contains("amx_bf16") => {
            (Precision::Bf16, "the CPU has AMX-BF16 matrix units (amx_bf16)".to_string())
        }
        Hardware::Cpu { flags } if flags.contains("avx512_bf16") => {
            (Precision::Bf16, "the CPU has AVX512-BF16 dot-product instructions (avx512_bf16)".to_string())
        }
        Hardware::Cpu { .. } => {
            (Precision::F32, "the CPU has no bf16 matrix units (neither amx_bf16 nor avx512_bf16)".to_string())
        }
        Hardware::Cuda { major: Some(m) } if *m >= 8 => {
            (Precision::Bf16, format!("the GPU (compute capability {m}.x) has bf16 tensor cores"))
        }
        Hardware::Cuda { major: Some(m) } => {
            (Precision::F32, format!("the GPU (compute capability {m}.x) has no bf16 tensor cores"))
        }
        Hardware::Cuda { major: None } => (Precision::F32, "the GPU's compute capability is unknown".to_string()),
    };
    Choice { precision, reason }
}

/// The CPU's model name and feature flags (Linux `/proc/cpuinfo`; empty elsewhere).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuInfo {
    pub model: String,
    pub flags: BTreeSet<String>,
}

impl CpuInfo {
    pub fn read() -> CpuInfo {
        std::fs::read_to_string("/proc/cpuinfo").map(|s| CpuInfo::parse(&s)).unwrap_or_default()
    }

    /// The first processor's `model name` and `flags` lines.
    pub fn parse(cpuinfo: &str) -> CpuInfo {
        let field = |name: &str| {
            cpuinfo.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
        };
        CpuInfo {
            model: field("model name").unwrap_or_default(),
            flags: field("flags").unwrap_or_default().split_whitespace().map(String::from).collect(),
        }
    }

    /// The flags that matter for the matrix products, in a fixed order.
    pub fn matrix_flags(&self) -> Vec<&str> {
        const NAMES: [&str; 10] = [
            "avx2",
            "fma",
            "avx512f",
            "avx512_vnni",
            "avx512_bf16",
            "avx512_fp16",
            "amx_tile",
            "amx_bf16",
            "amx_int8",
            "amx_fp16",
        ];
        NAMES.into_iter().filter(|n| self.flags.contains(*n)).collect()
    }
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

/// Sets the dtype that autocast computes in on `device`'s type. tch only
/// switches CUDA autocast on and off, and libtorch's CUDA default is f16,
/// so without this a bf16 run would silently compute in f16.
pub fn set_autocast_dtype(device: Device, kind: Kind) -> Result<()> {
    let (dt, code) = (device_type(device)?, scalar_type(kind)?);
    // SAFETY: the symbol's C++ signature is void(int8_t, int8_t), see above.
    let f: extern "C" fn(i8, i8) = unsafe { std::mem::transmute(autocast_fn(SET_AUTOCAST_DTYPE)?) };
    f(dt, code);
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

fn set_autocast_enabled(device: Device, on: bool) -> Result<()> {
    let dt = device_type(device)?;
    // SAFETY: void(int8_t, bool).
    let f: extern "C" fn(i8, bool) = unsafe { std::mem::transmute(autocast_fn(SET_AUTOCAST_ENABLED)?) };
    f(dt, on);
    Ok(())
}

/// Runs `f` under autocast on `device` (CPU or CUDA) computing in `kind`,
/// as `torch.autocast(device_type, dtype)`: the matrix products and
/// convolutions in `kind`, the ops libtorch keeps in f32 in f32. The state
/// before (on or off, dtype) is restored after, and the cache of cast
/// weights is dropped when the outermost region ends. (`tch::autocast`
/// only reaches CUDA, and does nothing on a machine without it.)
pub fn autocast<T>(device: Device, kind: Kind, f: impl FnOnce() -> T) -> Result<T> {
    let (was_on, was_kind) = (autocast_enabled(device)?, autocast_dtype(device)?);
    // SAFETY: int(void) and void(void).
    let increment: extern "C" fn() -> i32 = unsafe { std::mem::transmute(autocast_fn(INCREMENT_NESTING)?) };
    let decrement: extern "C" fn() -> i32 = unsafe { std::mem::transmute(autocast_fn(DECREMENT_NESTING)?) };
    let clear: extern "C" fn() = unsafe { std::mem::transmute(autocast_fn(CLEAR_CACHE)?) };
    set_autocast_dtype(device, kind)?;
    set_autocast_enabled(device, true)?;
    increment();
    let out = f();
    if decrement() == 0 {
        clear();
    }
    set_autocast_enabled(device, was_on)?;
    set_autocast_dtype(device, was_kind)?;
    Ok(out)
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
    fn cudnn_tf32_is_switched_and_read_back() {
        assert!(cudnn_tf32().unwrap(), "libtorch's default lets cuDNN use TF32");
        set_cudnn_tf32(false).unwrap();
        assert!(!cudnn_tf32().unwrap());
        set_cudnn_tf32(true).unwrap();
        assert!(cudnn_tf32().unwrap());
    }

    #[test]
    fn bad_devices_are_named_and_good_ones_round_trip() {
        let e = parse_device("gpu").unwrap_err().to_string();
        assert!(e.contains("`gpu`"), "{e}");
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        if !tch::Cuda::is_available() {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("no CUDA device"), "{e}");
        }
        for (text, arg) in [("cpu", DeviceArg::Cpu), ("cuda:3", DeviceArg::Cuda(3)), ("auto", DeviceArg::Auto)] {
            assert_eq!(text.parse::<DeviceArg>().unwrap(), arg);
            assert_eq!(arg.to_string(), text);
            assert_eq!(serde_json::to_string(&arg).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<DeviceArg>(&format!("\"{text}\"")).unwrap(), arg);
        }
        assert_eq!("cuda".parse::<DeviceArg>().unwrap(), DeviceArg::Cuda(0));
    }

    fn cpu(flags: &str) -> Hardware {
        Hardware::Cpu { flags: flags.split_whitespace().map(String::from).collect() }
    }

    #[test]
    fn auto_precision_follows_the_bf16_matrix_units() {
        // An Intel Xeon with AMX, an AMD EPYC with AVX512-BF16 only, an AVX2 machine, and GPUs.
        let amx = "fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile amx_int8 avx512_fp16";
        let zen4 = "fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx512_bf16";
        let avx2 = "fpu sse2 avx avx2 fma f16c";
        for (hw, expected, because) in [
            (cpu(amx), Precision::Bf16, "amx_bf16"),
            (cpu("amx_bf16"), Precision::Bf16, "amx_bf16"),
            (cpu(zen4), Precision::Bf16, "avx512_bf16"),
            (cpu(avx2), Precision::F32, "neither amx_bf16 nor avx512_bf16"),
            (cpu(""), Precision::F32, "no bf16"),
            // A flag's name must match whole: avx512bw is not avx512_bf16.
            (cpu("avx512bw avx512_bf16x"), Precision::F32, "no bf16"),
            (Hardware::Cuda { major: Some(9) }, Precision::Bf16, "9.x"),
            (Hardware::Cuda { major: Some(7) }, Precision::F32, "7.x"),
            (Hardware::Cuda { major: None }, Precision::F32, "unknown"),
        ] {
            let choice = auto_precision(&hw);
            assert_eq!(choice.precision, expected, "{hw:?}");
            assert!(choice.reason.contains(because), "{hw:?}: {}", choice.reason);
        }
    }

    #[test]
    fn cpuinfo_gives_the_model_and_the_flags_of_the_first_processor() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512_bf16\n\n\
                    processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n";
        let info = CpuInfo::parse(text);
        assert_eq!(info.model, "AMD EPYC 9R14");
        assert_eq!(info.flags.iter().map(String::as_str).collect::<Vec<_>>(), ["avx2", "avx512_bf16", "fpu"]);
        assert_eq!(info.matrix_flags(), ["avx2", "avx512_bf16"]);
        assert_eq!(CpuInfo::parse(""), CpuInfo::default());
    }

    #[test]
    fn precisions_resolve_and_f16_stays_on_cuda() {
        assert_eq!(Precision::Bf16.for_inference(Device::Cpu).unwrap(), Precision::Bf16);
        assert_eq!(Precision::F32.for_inference(Device::Cpu).unwrap(), Precision::F32);
        let e = Precision::F16.for_inference(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("f16") && e.contains("CUDA"), "{e}");
        let auto = Precision::Auto.for_inference(Device::Cpu).unwrap();
        assert_eq!(auto, auto_precision(&Hardware::of(Device::Cpu)).precision, "auto on this machine's flags");
        assert_ne!(auto, Precision::Auto);
        assert_eq!(Precision::Auto.kind(), None);
        assert_eq!(Precision::Bf16.kind(), Some(Kind::BFloat16));
        for p in [Precision::F32, Precision::F16, Precision::Bf16, Precision::Auto] {
            let name = p.to_string();
            assert_eq!(Precision::from_str(&name, false).unwrap(), p, "clap's name is the displayed one");
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{name}\""));
        }
    }
}
