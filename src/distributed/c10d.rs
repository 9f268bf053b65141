//! Safe wrappers over the C++ shim (c10d_shim.cpp): a TCPStore rendezvous
//! and a Gloo process group from libtorch's own c10d, taking tch tensors.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::time::Duration;

use anyhow::{bail, Result};
use tch::Tensor;

#[allow(improper_ctypes)]
extern "C" {
    fn detris_c10d_free(p: *mut c_void);
    fn detris_c10d_group_new(
        host: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        is_server: c_int,
        timeout_ms: i64,
        prefix: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut c_void;
    fn detris_c10d_group_free(g: *mut c_void);
    fn detris_c10d_allreduce_sum(g: *mut c_void, ts: *const *mut c_void, n: c_int, err: *mut *mut c_char) -> c_int;
    fn detris_c10d_broadcast(
        g: *mut c_void,
        ts: *const *mut c_void,
        n: c_int,
        root: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn detris_c10d_allgather(
        g: *mut c_void,
        input: *mut c_void,
        outs: *const *mut c_void,
        n: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
    fn detris_c10d_barrier(g: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn detris_c10d_allreduce_autograd(g: *mut c_void, x: *mut c_void, err: *mut *mut c_char) -> *mut c_void;
    fn detris_c10d_store_set(
        g: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn detris_c10d_store_get(
        g: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> c_int;
    fn detris_c10d_store_check(g: *mut c_void, key: *const c_char, present: *mut c_int, err: *mut *mut c_char)
        -> c_int;
}

/// Where the ranks meet and who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendezvous {
    pub host: String,
    pub port: u16,
    pub rank: usize,
    pub world: usize,
    /// This process hosts the TCPStore (rank 0 unless a launcher's agent does).
    pub host_store: bool,
    /// Bounds the rendezvous and every collective.
    pub timeout: Duration,
}

/// One rank's membership of a Gloo process group over a TCPStore.
pub struct Group {
    raw: *mut c_void,
    pub rank: usize,
    pub world: usize,
    pub timeout: Duration,
}

// The shim's process group and store are thread-safe C++ objects; collectives
// are issued in the same order on every rank by the one training thread (and
// by the autograd engine, which runs a CPU backward on that thread).
unsafe impl Send for Group {}
unsafe impl Sync for Group {}

fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown c10d error".into();
    }
    let s = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { detris_c10d_free(err as *mut c_void) };
    s
}

fn check(rc: c_int, err: *mut c_char) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(take_error(err))
    }
}

fn ptrs(ts: &[&Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

impl Group {
    /// Connects to the store (hosting it when `r.host_store`) and joins the
    /// Gloo group; `prefix` separates this group's keys from others'.
    pub fn join(r: &Rendezvous, prefix: &str) -> Result<Group, String> {
        let host = CString::new(r.host.clone()).map_err(|_| "the master address holds a NUL byte".to_string())?;
        let prefix = CString::new(prefix).unwrap();
        let mut err = std::ptr::null_mut();
        let raw = unsafe {
            detris_c10d_group_new(
                host.as_ptr(),
                r.port as c_int,
                r.rank as c_int,
                r.world as c_int,
                r.host_store as c_int,
                r.timeout.as_millis() as i64,
                prefix.as_ptr(),
                &mut err,
            )
        };
        if raw.is_null() {
            return Err(take_error(err));
        }
        Ok(Group { raw, rank: r.rank, world: r.world, timeout: r.timeout })
    }

    /// In place: each tensor becomes its sum over ranks (one coalesced
    /// all-reduce; all of one dtype, contiguous, on the CPU).
    pub fn allreduce_sum(&self, ts: &[&Tensor]) -> Result<(), String> {
        let p = ptrs(ts);
        let mut err = std::ptr::null_mut();
        check(unsafe { detris_c10d_allreduce_sum(self.raw, p.as_ptr(), p.len() as c_int, &mut err) }, err)
    }

    /// In place: each tensor takes rank `root`'s value.
    pub fn broadcast(&self, ts: &[&Tensor], root: usize) -> Result<(), String> {
        let p = ptrs(ts);
        let mut err = std::ptr::null_mut();
        check(unsafe { detris_c10d_broadcast(self.raw, p.as_ptr(), p.len() as c_int, root as c_int, &mut err) }, err)
    }

    /// Every rank's `input` (same shape and dtype everywhere), in rank order.
    pub fn allgather(&self, input: &Tensor) -> Result<Vec<Tensor>, String> {
        let input = input.contiguous();
        let outs: Vec<Tensor> = (0..self.world).map(|_| input.empty_like()).collect();
        let p = ptrs(&outs.iter().collect::<Vec<_>>());
        let mut err = std::ptr::null_mut();
        let rc = unsafe {
            detris_c10d_allgather(self.raw, input.as_ptr() as *mut c_void, p.as_ptr(), p.len() as c_int, &mut err)
        };
        check(rc, err)?;
        Ok(outs)
    }

    pub fn barrier(&self) -> Result<(), String> {
        let mut err = std::ptr::null_mut();
        check(unsafe { detris_c10d_barrier(self.raw, &mut err) }, err)
    }

    /// The sum over ranks of `x`, differentiable: its backward sums the
    /// incoming gradients over ranks (the gradient of Σ_r L_r).
    pub fn allreduce_sum_autograd(&self, x: &Tensor) -> Result<Tensor, String> {
        let mut err = std::ptr::null_mut();
        let out = unsafe { detris_c10d_allreduce_autograd(self.raw, x.as_ptr() as *mut c_void, &mut err) };
        if out.is_null() {
            return Err(take_error(err));
        }
        Ok(unsafe { Tensor::from_ptr(out as *mut _) })
    }

    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        let k = CString::new(key).unwrap();
        let mut err = std::ptr::null_mut();
        check(unsafe { detris_c10d_store_set(self.raw, k.as_ptr(), value.as_ptr(), value.len(), &mut err) }, err)
    }

    /// Waits (up to the group's timeout) for `key`.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>, String> {
        let k = CString::new(key).unwrap();
        let (mut data, mut len, mut err) = (std::ptr::null_mut(), 0usize, std::ptr::null_mut());
        check(unsafe { detris_c10d_store_get(self.raw, k.as_ptr(), &mut data, &mut len, &mut err) }, err)?;
        let v = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { detris_c10d_free(data as *mut c_void) };
        Ok(v)
    }

    /// Whether `key` is in the store now.
    pub fn store_check(&self, key: &str) -> Result<bool, String> {
        let k = CString::new(key).unwrap();
        let (mut present, mut err) = (0, std::ptr::null_mut());
        check(unsafe { detris_c10d_store_check(self.raw, k.as_ptr(), &mut present, &mut err) }, err)?;
        Ok(present != 0)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        unsafe { detris_c10d_group_free(self.raw) }
    }
}

/// Checks a rendezvous's numbers before any connection is tried.
pub fn validate(r: &Rendezvous) -> Result<()> {
    if r.world == 0 {
        bail!("WORLD_SIZE is 0: at least one rank is needed");
    }
    if r.rank >= r.world {
        bail!("RANK {} is not below WORLD_SIZE {}", r.rank, r.world);
    }
    Ok(())
}
