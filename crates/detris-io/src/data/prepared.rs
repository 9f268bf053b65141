//! The prepared layout the official `tools/data_process.py --generate_mask`
//! writes, and detris reads instead of the official LMDBs:
//!
//! ```text
//! <root>/anns/<dataset>/<split>.json     [{bbox, cat, segment_id, img_name, sentences, sentences_num}]
//! <root>/masks/<dataset>/<ref_id>.png    8-bit grey, part count × 255 (u8), non-zero = object
//! <root>/images/train2014/<img_name>
//! ```
//!
//! [`prepare`] writes it from a REFER download exactly as the official script
//! does; [`read_split`] reads it.

use super::coco_mask::CountMask;
use super::refer::{is_plain_name, reject_lmdb, Ref, Refer};
use super::splits::{self, filter_mixed_train, Sourced, MIXED_SOURCES};
use crate::error::{read_file, Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// One expression of a prepared ref.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sentence {
    /// Position in the ref's sentence list.
    pub idx: usize,
    pub sent_id: i64,
    /// The REFER `sent`, whitespace-stripped.
    pub sent: String,
}

/// One element of `anns/<dataset>/<split>.json`. Field order is the official one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefRecord {
    /// `[x0, y0, x1, y1]` pixels: `int(x), int(y), int(x)+int(w), int(y)+int(h)`.
    pub bbox: [i64; 4],
    /// COCO category mapped to 0..79 ([`coco_category_index`]).
    pub cat: i64,
    /// The ref id (the mixed set: `<dataset>_<ref id>`); names the mask
    /// `masks/<dataset>/<segment_id>.png`.
    pub segment_id: SegmentId,
    /// COCO file name of the image, under `images/train2014/`.
    pub img_name: String,
    pub sentences: Vec<Sentence>,
}

/// A prepared ref's id: the REFER ref id, or in the mixed set the source
/// data set's name and that id (`refcoco+_123`), as `tools/mix.py` names them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SegmentId {
    Ref(i64),
    Named(String),
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentId::Ref(id) => write!(f, "{id}"),
            SegmentId::Named(name) => f.write_str(name),
        }
    }
}

/// What [`prepare`] wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PrepareReport {
    /// Name under `anns/` and `masks/` (`refcocog_u`, ...).
    pub dataset: String,
    /// (split, refs, sentences) per split file written, in order.
    pub splits: Vec<(String, usize, usize)>,
    pub masks_written: usize,
    /// Where the readers will look for the images.
    pub images_dir: PathBuf,
    /// True when `images_dir` was created as a link to the REFER images.
    pub images_linked: bool,
}

/// `anns/<dataset>/<split>.json`.
pub fn ann_path(root: &Path, dataset: &str, split: &str) -> PathBuf {
    root.join("anns").join(dataset).join(format!("{split}.json"))
}

/// `masks/<dataset>/<segment_id>.png`.
pub fn mask_path(root: &Path, dataset: &str, segment_id: impl std::fmt::Display) -> PathBuf {
    root.join("masks").join(dataset).join(format!("{segment_id}.png"))
}

/// `images/train2014/<img_name>`.
pub fn image_path(root: &Path, img_name: &str) -> PathBuf {
    root.join("images").join(splits::COCO_IMAGES).join(img_name)
}

/// `images/<train2014, or saiapr_tc-12 for refclef>/<img_name>`.
pub fn image_path_of(root: &Path, dataset: &str, img_name: &str) -> PathBuf {
    root.join("images").join(splits::image_dir(dataset)).join(img_name)
}

/// Reads `anns/<dataset>/<split>.json`. Known data sets must name one of their
/// splits; any other folder (e.g. the synthetic set) any split that exists.
pub fn read_split(root: &Path, dataset: &str, split: &str) -> Result<Vec<RefRecord>> {
    reject_lmdb(root, dataset)?;
    if splits::dataset(dataset).is_ok() {
        splits::check_split(dataset, split)?;
    } else if !is_plain_name(dataset) || !is_plain_name(split) {
        return Err(Error::input(format!("'{dataset}' / '{split}' is not a data set / split name")));
    }
    let path = ann_path(root, dataset, split);
    let records: Vec<RefRecord> = serde_json::from_slice(&read_file(&path)?)
        .map_err(|e| Error::invalid(&path, format!("not a prepared split file: {e}")))?;
    for (i, r) in records.iter().enumerate() {
        if !is_plain_name(&r.img_name) {
            return Err(Error::invalid(&path, format!("entry {i}: img_name {:?} is not a file name", r.img_name)));
        }
        if let SegmentId::Named(name) = &r.segment_id {
            if !is_plain_name(name) {
                return Err(Error::invalid(&path, format!("entry {i}: segment_id {name:?} cannot name a mask file")));
            }
        }
    }
    Ok(records)
}

/// The mixed training set of DETRIS-L* from a prepared root: the train refs of
/// refcoco, refcoco+ and refcocog_u, minus every ref whose image is in a
/// val/test split of any of the three. Returns the refs and the number removed.
pub fn read_mixed_train(root: &Path) -> Result<(Vec<Sourced<RefRecord>>, usize)> {
    let mut train = Vec::new();
    let mut held_out = HashSet::new();
    for name in MIXED_SOURCES {
        let spec = splits::dataset(name)?;
        for &split in spec.splits {
            let records = read_split(root, name, split)?;
            if split == "train" {
                train.extend(records.into_iter().map(|item| Sourced { dataset: spec.name, item }));
            } else {
                held_out.extend(records.into_iter().map(|r| r.img_name));
            }
        }
    }
    Ok(filter_mixed_train(train, |r| r.img_name.as_str(), &held_out))
}

/// What [`prepare_mixed`] wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MixedReport {
    pub dataset: &'static str,
    /// (split, refs, sentences) per split file written.
    pub splits: Vec<(String, usize, usize)>,
    pub masks_written: usize,
    /// Training refs left out by `exclude_eval_images` (0 without it).
    pub excluded_train_refs: usize,
}

/// `tools/mix.py` and `tools/mix_mask.py` on the prepared layout: the train
/// and val splits of refcoco, refcoco+ and refcocog_u under `root`,
/// concatenated in that order into `anns/refcoco_mixed/<split>.json`, every
/// `segment_id` renamed `<dataset>_<ref id>`, and the masks copied to
/// `masks/refcoco_mixed/<dataset>_<ref id>.png`. With `exclude_eval_images`
/// the training refs on pictures of any source's val/test splits are left
/// out (the official set keeps them, so the DETRIS-L* models saw the
/// evaluation pictures in training).
pub fn prepare_mixed(root: &Path, exclude_eval_images: bool) -> Result<MixedReport> {
    let mut report =
        MixedReport { dataset: splits::MIXED, splits: Vec::new(), masks_written: 0, excluded_train_refs: 0 };
    for dir in [root.join("masks").join(splits::MIXED), root.join("anns").join(splits::MIXED)] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    for split in splits::MIXED_SPLITS {
        let mut sourced = Vec::new();
        for name in MIXED_SOURCES {
            sourced.extend(read_split(root, name, split)?.into_iter().map(|item| Sourced { dataset: name, item }));
        }
        if exclude_eval_images && split == "train" {
            let (kept, removed) = read_mixed_train(root)?;
            sourced = kept;
            report.excluded_train_refs = removed;
        }
        let mut records = Vec::with_capacity(sourced.len());
        for Sourced { dataset, mut item } in sourced {
            let renamed = SegmentId::Named(format!("{dataset}_{}", item.segment_id));
            let (from, to) = (mask_path(root, dataset, &item.segment_id), mask_path(root, splits::MIXED, &renamed));
            let bytes = read_file(&from)?;
            write_atomic(&to, &bytes)?;
            report.masks_written += 1;
            item.segment_id = renamed;
            records.push(item);
        }
        let sentences = records.iter().map(|r| r.sentences.len()).sum();
        write_split_json(&ann_path(root, splits::MIXED, split), &records)?;
        report.splits.push((split.to_string(), records.len(), sentences));
    }
    Ok(report)
}

/// `cat_process` of `data_process.py`: the 80 COCO category ids (1..90 with
/// gaps) → 0..79. Ids outside the 80 pass through unchanged, as there.
pub fn coco_category_index(cat: i64) -> i64 {
    match cat {
        1..=11 => cat - 1,
        13..=25 => cat - 2,
        27..=28 => cat - 3,
        31..=44 => cat - 5,
        46..=65 => cat - 6,
        67 => cat - 7,
        70 => cat - 9,
        72..=82 => cat - 10,
        84..=90 => cat - 11,
        _ => cat,
    }
}

/// `bbox_process`: Python `int()` (truncation toward zero) of `[x, y, w, h]`,
/// then `[x, y, x + w, y + h]`.
pub fn box_corners(bbox: [f64; 4]) -> Result<[i64; 4]> {
    let mut t = [0i64; 4];
    for (out, v) in t.iter_mut().zip(bbox) {
        if !v.is_finite() || v.abs() > 1e15 {
            return Err(Error::input(format!("bbox value {v} is not a usable pixel coordinate")));
        }
        *out = v.trunc() as i64;
    }
    Ok([t[0], t[1], t[0] + t[2], t[1] + t[3]])
}

/// Python's `str.strip()`: Rust's whitespace plus the separators U+001C..U+001F.
fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The prepared record of one ref (`ref_dict` of `data_process.py`).
pub fn record_of(refer: &Refer, r: &Ref) -> Result<RefRecord> {
    Ok(RefRecord {
        bbox: box_corners(refer.ref_box(r)?)
            .map_err(|e| Error::invalid(refer.instances_path(), format!("ref {}: {e}", r.ref_id)))?,
        cat: coco_category_index(r.category_id),
        segment_id: SegmentId::Ref(r.ref_id),
        img_name: refer.image(r)?.file_name.clone(),
        sentences: r
            .sentences
            .iter()
            .enumerate()
            .map(|(idx, s)| Sentence { idx, sent_id: s.sent_id, sent: python_strip(&s.sent).to_string() })
            .collect(),
    })
}

/// `tools/data_process.py --generate_mask` in Rust: reads the REFER download
/// at `refer_root` (`dataset`/`split_by` as [`super::refer::ReferSource::resolve`]
/// takes them) and writes `out_root/anns/<name>/<split>.json` for every split of
/// the official list, in REFER ref order, and `out_root/masks/<name>/<ref_id>.png`.
/// When `out_root` has no `images/` and the REFER root has, it is linked there
/// so that the prepared root is complete.
pub fn prepare(refer_root: &Path, dataset: &str, split_by: Option<&str>, out_root: &Path) -> Result<PrepareReport> {
    let refer = Refer::load(refer_root, dataset, split_by)?;
    let name = refer.source.name.clone();
    let ann_dir = out_root.join("anns").join(&name);
    let mask_dir = out_root.join("masks").join(&name);
    for dir in [&ann_dir, &mask_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut report = PrepareReport {
        dataset: name.clone(),
        splits: Vec::new(),
        masks_written: 0,
        images_dir: out_root.join("images"),
        images_linked: false,
    };
    for split in &refer.source.splits {
        if !is_plain_name(split) {
            return Err(Error::invalid(refer.refs_path(), format!("split name {split:?} cannot name a file")));
        }
        let mut refs = refer.refs_in_split(split)?;
        // data_process.py skips a few pictures (refclef): no record, no mask.
        let excluded = &refer.source.excluded_images;
        if !excluded.is_empty() {
            refs.retain(|r| refer.image(r).is_ok_and(|img| !excluded.contains(&img.file_name)));
        }
        let records = refs.iter().map(|r| record_of(&refer, r)).collect::<Result<Vec<_>>>()?;
        // Rasterising and PNG-encoding dominate (tens of thousands of refs): in parallel.
        refs.par_iter().try_for_each(|r| write_mask_png(&mask_path(out_root, &name, r.ref_id), &refer.mask(r)?))?;
        report.masks_written += refs.len();
        let sentences = records.iter().map(|r| r.sentences.len()).sum();
        write_split_json(&ann_path(out_root, &name, split), &records)?;
        report.splits.push((split.clone(), records.len(), sentences));
    }
    report.images_linked = link_images(refer_root, out_root)?;
    if !report.images_linked && !report.images_dir.exists() {
        report.images_dir = refer_root.join("images");
    }
    Ok(report)
}

/// Links `out_root/images` to the REFER root's `images/` when absent.
fn link_images(refer_root: &Path, out_root: &Path) -> Result<bool> {
    let (src, dst) = (refer_root.join("images"), out_root.join("images"));
    if !src.is_dir() || dst.exists() || dst.symlink_metadata().is_ok() {
        return Ok(false);
    }
    let target = std::fs::canonicalize(&src).map_err(|e| Error::io(&src, e))?;
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&target, &dst).map_err(|e| Error::io(&dst, e))?;
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = target;
        Ok(false)
    }
}

/// The split file as Python's `json.dump` writes it (`, ` and `: `
/// separators, non-ASCII as `\uXXXX`), with `sentences_num` appended.
fn write_split_json(path: &Path, records: &[RefRecord]) -> Result<()> {
    #[derive(Serialize)]
    struct Official<'a> {
        #[serde(flatten)]
        record: &'a RefRecord,
        sentences_num: usize,
    }
    let rows: Vec<Official> =
        records.iter().map(|record| Official { record, sentences_num: record.sentences.len() }).collect();
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonJson);
    rows.serialize(&mut ser).map_err(|e| Error::invalid(path, format!("cannot encode JSON: {e}")))?;
    write_atomic(path, &out)
}

/// The mask PNG `cv2.imwrite` makes of `mask * 255` (u8): 8-bit grey.
fn write_mask_png(path: &Path, mask: &CountMask) -> Result<()> {
    let bad = |e: png::EncodingError| Error::invalid(path, format!("cannot encode PNG: {e}"));
    let (w, h) = (u32::try_from(mask.width), u32::try_from(mask.height));
    let (Ok(w), Ok(h)) = (w, h) else {
        return Err(Error::invalid(path, "mask too large for a PNG"));
    };
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w, h);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(bad)?;
    writer.write_image_data(&mask.png_values()).map_err(bad)?;
    writer.finish().map_err(bad)?;
    write_atomic(path, &bytes)
}

/// Write to a temporary sibling, then rename: no half-written file is left.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    // Unique per call: a ref id listed twice is written by two threads at once.
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}-{}", std::process::id(), CALLS.fetch_add(1, Ordering::Relaxed)));
    let tmp = PathBuf::from(tmp);
    let written =
        std::fs::File::create(&tmp).and_then(|mut f| f.write_all(bytes)).and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// serde_json formatting of Python's `json.dumps` defaults.
struct PythonJson;

impl serde_json::ser::Formatter for PythonJson {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, w: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + std::io::Write>(&mut self, w: &mut W, fragment: &str) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
