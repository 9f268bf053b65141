//! `torch.utils.data.DistributedSampler`'s rule: a permutation from a
//! generator seeded with seed + epoch (libtorch's own randperm), padded by
//! repetition to a multiple of the world size (or cut, with drop_last),
//! then every world-th index from the rank's own.

use std::ffi::{c_char, c_void, CStr};

use tch::Tensor;

extern "C" {
    fn detris_randperm(n: i64, seed: u64, err: *mut *mut c_char) -> *mut c_void;
    fn detris_c10d_free(p: *mut c_void);
}

/// `torch.randperm(n, generator=torch.Generator().manual_seed(seed))`.
pub fn randperm(n: usize, seed: u64) -> Vec<usize> {
    let mut err = std::ptr::null_mut();
    let t = unsafe { detris_randperm(n as i64, seed, &mut err) };
    if t.is_null() {
        let msg = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
        unsafe { detris_c10d_free(err as *mut c_void) };
        panic!("randperm({n}) failed: {msg}");
    }
    let t = unsafe { Tensor::from_ptr(t as *mut _) };
    Vec::<i64>::try_from(&t).expect("randperm gives int64").into_iter().map(|i| i as usize).collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributedSampler {
    pub len: usize,
    pub world: usize,
    pub rank: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
}

impl DistributedSampler {
    /// Indices per rank (`num_samples` in PyTorch).
    pub fn num_samples(&self) -> usize {
        if self.drop_last && self.len % self.world != 0 {
            // ceil((len - world) / world)
            self.len.saturating_sub(self.world).div_ceil(self.world)
        } else {
            self.len.div_ceil(self.world)
        }
    }

    /// This rank's indices in epoch `epoch` (`set_epoch(epoch)`, then `iter`).
    pub fn indices(&self, epoch: u64) -> Vec<usize> {
        let mut indices: Vec<usize> =
            if self.shuffle { randperm(self.len, self.seed + epoch) } else { (0..self.len).collect() };
        let total = self.num_samples() * self.world;
        if !self.drop_last && total > indices.len() && !indices.is_empty() {
            let head = indices.clone();
            while indices.len() < total {
                let need = total - indices.len();
                indices.extend_from_slice(&head[..need.min(head.len())]);
            }
        }
        indices.truncate(total);
        indices.into_iter().skip(self.rank).step_by(self.world).collect()
    }
}

/// One rank's training batches of `epoch` as (ref, sentence) pairs: the
/// sampler's indices in batches of `local_batch` (the last partial batch
/// dropped, as the official loader's drop_last), each ref with a sentence
/// drawn from (seed, epoch, ref) alone, so the choice does not depend on the
/// number of ranks.
pub fn train_plan(
    sampler: &DistributedSampler,
    sentences: &[usize],
    local_batch: usize,
    epoch: u64,
) -> Vec<Vec<(usize, usize)>> {
    let samples: Vec<(usize, usize)> = sampler
        .indices(epoch)
        .into_iter()
        .map(|r| {
            let h =
                super::digest_bytes(&[&sampler.seed.to_le_bytes(), &epoch.to_le_bytes(), &(r as u64).to_le_bytes()]);
            (r, (h % sentences[r].max(1) as u64) as usize)
        })
        .collect();
    samples.chunks_exact(local_batch.max(1)).map(<[_]>::to_vec).collect()
}
