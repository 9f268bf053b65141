//! What `--precision auto` picks from the hardware, and which precisions a
//! device can run.

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use tch::Device;

use super::libtorch::cuda_compute_major;
use super::options::Precision;

impl Precision {
    /// `auto` as what it picks on `device` (with the reason); the others as they are.
    pub fn resolve(self, device: Device) -> Choice {
        match self {
            Precision::Auto => auto_precision(&Hardware::of(device)),
            p => Choice { precision: p, reason: "asked for".into() },
        }
    }

    /// The inference precision on `device`, `auto` resolved. f16 needs CUDA:
    /// CPUs without f16 matrix units compute it far slower than f32. int8
    /// needs the CPU: its products are oneDNN's CPU kernels.
    pub fn for_inference(self, device: Device) -> Result<Precision> {
        let p = self.resolve(device).precision;
        if p == Precision::F16 && device == Device::Cpu {
            bail!("--precision f16 needs a CUDA device (on CPU use bf16 or f32)");
        }
        if p == Precision::Int8 && device != Device::Cpu {
            bail!("--precision int8 runs on the CPU (oneDNN's int8 products); on {device:?} use bf16 or f16");
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
///
/// `auto` never picks int8: its masks differ from f32's more than bf16's do,
/// and it has measured faster than packed bf16 only on DINOv2's products alone
/// (docs/bench), not yet as a whole model on a CPU with AMX-INT8, so it stays
/// a choice the user makes.
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

/// Whether oneDNN can hold bf16 linear weights packed on a CPU with these
/// flags: libtorch's `mkldnn::_reorder_linear_weight` (and its bf16 linear)
/// refuse a CPU without `avx_ne_convert` or all of `avx512bw`, `avx512vl` and
/// `avx512dq`. Elsewhere (AVX2-only CPUs) bf16 runs libtorch's plain `linear`.
pub fn can_pack_bf16(flags: &BTreeSet<String>) -> bool {
    flags.contains("avx_ne_convert") || ["avx512bw", "avx512vl", "avx512dq"].iter().all(|f| flags.contains(*f))
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn bf16_packs_only_where_libtorch_can_reorder_it() {
        let flags = |s: &str| s.split_whitespace().map(String::from).collect::<BTreeSet<_>>();
        assert!(can_pack_bf16(&flags("avx2 avx512f avx512bw avx512vl avx512dq avx512_bf16")));
        assert!(can_pack_bf16(&flags("avx2 avx_ne_convert")));
        assert!(!can_pack_bf16(&flags("avx2 fma f16c")));
        assert!(!can_pack_bf16(&flags("avx2 avx512f avx512bw avx512vl")), "avx512dq missing");
        assert!(!can_pack_bf16(&flags("")));
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
        assert_ne!(auto, Precision::Int8, "auto never picks int8");
        assert_eq!(Precision::Int8.for_inference(Device::Cpu).unwrap(), Precision::Int8);
        let e = Precision::Int8.for_inference(Device::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("int8") && e.contains("CPU"), "{e}");
    }
}
