//! The `--device` and `--precision` option types, parsed once (clap, serde).

use std::str::FromStr;

use anyhow::{bail, Result};
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
    /// error, not a crash at the first tensor. Opening changes no setting
    /// (cuDNN's f32 is kept exact by the model, see `ExactF32`).
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
        }
        Ok(device)
    }
}

/// [`DeviceArg`] from text, opened.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceArg>().map_err(anyhow::Error::msg)?.open()
}

/// `--precision`: the arithmetic of the weights and activations (inference)
/// or of autocast (training). `auto` resolves per device, see
/// [`auto_precision`](super::auto_precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
    /// Inference on the CPU: the backbones' frozen linear layers in int8
    /// (oneDNN, see `model::packing`), everything else in bf16.
    Int8,
    Auto,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Auto => "auto",
        })
    }
}

impl Precision {
    /// The precision whose tensors are of `kind` (what `Segmenter::builder().precision`
    /// takes): f32, bf16 or f16.
    pub fn of_kind(kind: Kind) -> Result<Precision> {
        Ok(match kind {
            Kind::Float => Precision::F32,
            Kind::BFloat16 => Precision::Bf16,
            Kind::Half => Precision::F16,
            other => bail!("precision {other:?}: use Float, BFloat16 or Half"),
        })
    }

    /// The tensor kind; `None` for `auto` (resolve it first).
    pub fn kind(self) -> Option<Kind> {
        match self {
            Precision::F32 => Some(Kind::Float),
            Precision::F16 => Some(Kind::Half),
            Precision::Bf16 => Some(Kind::BFloat16),
            // The activations and the weights that stay unquantised.
            Precision::Int8 => Some(Kind::BFloat16),
            Precision::Auto => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn precisions_name_their_kind_and_round_trip() {
        assert_eq!(Precision::Auto.kind(), None);
        assert_eq!(Precision::Bf16.kind(), Some(Kind::BFloat16));
        assert_eq!(Precision::Int8.kind(), Some(Kind::BFloat16), "int8 keeps its other tensors in bf16");
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            assert_eq!(Precision::of_kind(p.kind().unwrap()).unwrap(), p);
        }
        let e = Precision::of_kind(Kind::Int64).unwrap_err().to_string();
        assert!(e.contains("precision Int64"), "{e}");
        for p in [Precision::F32, Precision::F16, Precision::Bf16, Precision::Int8, Precision::Auto] {
            let name = p.to_string();
            assert_eq!(Precision::from_str(&name, false).unwrap(), p, "clap's name is the displayed one");
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{name}\""));
        }
    }
}
