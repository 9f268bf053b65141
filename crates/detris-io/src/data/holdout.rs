//! `--val-fraction`: a deterministic split of one source into training and validation refs
//! by photo, so that no photo is on both sides.
//!
//! Every distinct photo ([`RefSource::photo_key`], the path as the manifest writes it) is
//! ranked by a hash of its key and the seed; the first `round(fraction × photos)` photos
//! (at least one, and leaving at least one) go to validation. The split depends only on the
//! photo paths, the fraction and the seed: not on the order of the lines, nor on where the
//! data lies, nor on the Rust version. Both sides keep the source's order.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::source::RefSource;
use crate::error::{Error, Result};

/// The two sides of a split by photo.
#[derive(Clone, Debug)]
pub struct HoldOut {
    pub train: RefSource,
    pub val: RefSource,
    pub counts: HoldOutCounts,
}

/// How many photos and refs each side has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct HoldOutCounts {
    pub train_photos: usize,
    pub val_photos: usize,
    pub train_refs: usize,
    pub val_refs: usize,
}

/// splitmix64's finaliser: spreads a key and the seed over all 64 bits.
fn mix(key: u64, seed: u64) -> u64 {
    let mut z = key ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Splits `source` by photo; `fraction` of the photos (0 < fraction < 1) go to validation.
pub fn split_by_photo(source: &RefSource, fraction: f64, seed: u64) -> Result<HoldOut> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(Error::input(format!("the validation fraction {fraction} is not between 0 and 1")));
    }
    let keys: Vec<u64> = (0..source.len()).map(|r| source.photo_key(r)).collect();
    let mut photos: Vec<u64> = keys.iter().copied().collect::<HashSet<_>>().into_iter().collect();
    if photos.len() < 2 {
        return Err(Error::input(format!(
            "{} has {} photo(s): a split by photo needs at least 2",
            source.describe(),
            photos.len()
        )));
    }
    photos.sort_unstable_by_key(|&k| (mix(k, seed), k));
    let val_photos = ((fraction * photos.len() as f64).round() as usize).clamp(1, photos.len() - 1);
    let side: HashMap<u64, bool> = photos.iter().enumerate().map(|(i, &k)| (k, i < val_photos)).collect();
    let val = source.filter(|r| side[&keys[r]]);
    let train = source.filter(|r| !side[&keys[r]]);
    let counts = HoldOutCounts {
        train_photos: photos.len() - val_photos,
        val_photos,
        train_refs: train.len(),
        val_refs: val.len(),
    };
    Ok(HoldOut { train, val, counts })
}
