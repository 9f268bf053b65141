//! The arithmetic of a training run: f32, or autocast in bf16 (CPU or CUDA)
//! or f16 (CUDA) with dynamic loss scaling, as `torch.cuda.amp`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind};

use crate::device::Precision;

/// Autocast's dtype (none: f32) and the loss scaler of a run.
pub struct MixedPrecision {
    pub device: Device,
    pub autocast: Option<Kind>,
    pub scaler: GradScaler,
}

impl MixedPrecision {
    /// `precision` on `device` (`auto` resolved as for inference). f16
    /// needs CUDA: libtorch's CPU autocast computes in bf16.
    pub fn new(precision: Precision, device: Device) -> Result<MixedPrecision> {
        let autocast = match precision.resolve(device).precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(Kind::BFloat16),
            Precision::F16 if device.is_cuda() => Some(Kind::Half),
            p => bail!("--precision {p} is not available on {device:?} (f32 or bf16 on CPU; f32, bf16 or f16 on CUDA)"),
        };
        Ok(MixedPrecision { device, autocast, scaler: GradScaler::new(autocast == Some(Kind::Half)) })
    }

    /// Runs a forward pass in this precision (under autocast for bf16/f16).
    pub fn forward<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        match self.autocast {
            None => Ok(f()),
            Some(kind) => crate::device::autocast(self.device, kind, f),
        }
    }
}

/// Dynamic loss scaling by `torch.cuda.amp.GradScaler`'s documented rule
/// (default arguments): the loss is multiplied by `scale` before backward
/// and the gradients divided by it before the optimizer step; the scale
/// starts at 2^16, doubles after 2000 consecutive steps without overflow, and
/// halves when any gradient is inf or NaN, that step being skipped. A no-op
/// (scale 1) when disabled. Its state travels in the training checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradScaler {
    pub enabled: bool,
    pub scale: f64,
    /// Consecutive steps without overflow since the scale last changed.
    pub growth_tracker: u32,
}

impl GradScaler {
    pub const INIT_SCALE: f64 = 65536.0;
    pub const GROWTH_FACTOR: f64 = 2.0;
    pub const BACKOFF_FACTOR: f64 = 0.5;
    pub const GROWTH_INTERVAL: u32 = 2000;

    pub fn new(enabled: bool) -> GradScaler {
        GradScaler { enabled, scale: if enabled { Self::INIT_SCALE } else { 1.0 }, growth_tracker: 0 }
    }

    /// After a step's gradients are final (and the step taken or skipped):
    /// `found_inf` says whether any of them was inf or NaN. PyTorch keeps the
    /// scale in f32 and grows it only while the grown value stays finite there.
    pub fn update(&mut self, found_inf: bool) {
        if !self.enabled {
            return;
        }
        if found_inf {
            self.scale *= Self::BACKOFF_FACTOR;
            self.growth_tracker = 0;
            return;
        }
        self.growth_tracker += 1;
        if self.growth_tracker == Self::GROWTH_INTERVAL {
            let grown = self.scale * Self::GROWTH_FACTOR;
            if (grown as f32).is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_starts_at_65536_and_doubles_after_2000_clean_steps() {
        let mut s = GradScaler::new(true);
        assert_eq!(s.scale, 65536.0);
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!((s.scale, s.growth_tracker), (65536.0, 1999), "not yet after 1999");
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (131072.0, 0), "doubled at the 2000th");
        for _ in 0..2000 {
            s.update(false);
        }
        assert_eq!(s.scale, 262144.0, "and again after 2000 more");
    }

    #[test]
    fn an_overflow_halves_the_scale_and_restarts_the_count() {
        let mut s = GradScaler::new(true);
        for _ in 0..1500 {
            s.update(false);
        }
        s.update(true);
        assert_eq!((s.scale, s.growth_tracker), (32768.0, 0));
        s.update(true);
        assert_eq!(s.scale, 16384.0, "each overflow halves");
        for _ in 0..1999 {
            s.update(false);
        }
        assert_eq!(s.scale, 16384.0, "the 1500 clean steps before the overflow do not count");
        s.update(false);
        assert_eq!(s.scale, 32768.0);
    }

    #[test]
    fn the_scale_never_grows_past_f32_and_a_disabled_scaler_does_nothing() {
        let mut s = GradScaler { enabled: true, scale: 2f64.powi(127), growth_tracker: 1999 };
        s.update(false);
        assert_eq!((s.scale, s.growth_tracker), (2f64.powi(127), 0), "2^128 is inf in f32");
        let mut off = GradScaler::new(false);
        for found_inf in [true, false, true] {
            off.update(found_inf);
        }
        assert_eq!(off, GradScaler { enabled: false, scale: 1.0, growth_tracker: 0 });
    }

    #[test]
    fn precisions_per_device() {
        let bf16 = MixedPrecision::new(Precision::Bf16, Device::Cpu).unwrap();
        assert_eq!(bf16.autocast, Some(Kind::BFloat16));
        assert!(!bf16.scaler.enabled, "bf16 has f32's range: no loss scaling");
        assert_eq!(MixedPrecision::new(Precision::F32, Device::Cpu).unwrap().autocast, None);
        let e = MixedPrecision::new(Precision::F16, Device::Cpu).err().unwrap().to_string();
        assert!(e.contains("f16") && e.contains("Cpu"), "{e}");
        if tch::Cuda::is_available() {
            let f16 = MixedPrecision::new(Precision::F16, Device::Cuda(0)).unwrap();
            assert_eq!((f16.autocast, f16.scaler.scale), (Some(Kind::Half), 65536.0));
        }
    }
}
