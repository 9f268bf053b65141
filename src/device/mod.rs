//! Devices and precisions: the option types ([`options`]), what
//! `--precision auto` picks from the hardware ([`policy`]), the libtorch
//! settings that tch does not wrap as scoped guards ([`libtorch`]: autocast on
//! CPU and its dtype, cuDNN's TF32) and the memory probes ([`memory`]).

pub mod libtorch;
pub mod memory;
pub mod options;
pub mod policy;

pub use libtorch::{
    autocast, autocast_dtype, autocast_enabled, cuda_compute_major, cudnn_tf32, set_autocast_dtype, set_cudnn_tf32,
    Autocast, ExactF32,
};
pub use memory::{cuda_memory_in_use, peak_rss_kib};
pub use options::{parse_device, DeviceArg, Precision};
pub use policy::{auto_precision, can_pack_bf16, Choice, CpuInfo, Hardware};
