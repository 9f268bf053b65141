//! Memory probes for `detris bench` and the load runs: this process's peak
//! resident set, and the CUDA device's memory in use.

use super::libtorch::cuda_mem_get_info;

/// Bytes of the current CUDA device's memory in use by every process
/// (`cudaMemGetInfo`: total − free), or None without a CUDA runtime. In a
/// process of its own, the growth of this over a run is what libtorch's
/// caching allocator reserved at its peak (it keeps what it took), plus
/// cuDNN and cuBLAS workspaces: the memory a user sees taken.
pub fn cuda_memory_in_use() -> Option<u64> {
    let (free, total) = cuda_mem_get_info()?;
    Some(total - free)
}

/// Peak resident set size of this process (Linux `VmHWM`), KiB; None where
/// `/proc/self/status` does not say.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
