//! The manifest of `detris segment --manifest` and of training on one's own data: JSON
//! Lines, one object (a ref: a photo, its sentences, their ground truth) per line.
//!
//! ```text
//! {"image": "photos/a.jpg", "sentences": ["the dog on the left", "the red car"]}
//! {"id": "ref-42", "image": "b.png", "sentences": ["the cup"], "mask": "masks/42.png"}
//! {"image": "c.jpg", "sentences": ["the man"], "mask_rle": {"size": [480, 640], "counts": "..."}}
//! {"image": "d.jpg", "sentences": ["the kite"], "mask_polygons": [[10, 12, 40.5, 12, 30, 52.25]]}
//! ```
//!
//! `image` and `mask` are relative to the manifest's folder unless absolute. The ground truth
//! of every sentence of the line is one of:
//! * `mask`: a PNG. Any non-zero value is foreground; as training target a value v counts
//!   v/255, as the official loader reads its masks, except that a PNG holding only 0 and 1
//!   is read as 0/255;
//! * `mask_rle`: COCO RLE (compressed string or list of runs, as pycocotools writes it);
//! * `mask_polygons`: COCO polygons `[[x1, y1, x2, y2, ...], ...]` in the photo's pixel
//!   coordinates (after its EXIF orientation), at least 3 points each, rasterised at the
//!   photo's size exactly as pycocotools' `frPyObjects` then `merge` (the union of the
//!   polygons, `annToMask`'s mask), see [`Rle::from_polygons`].
//!
//! A line is one ref, as a record of the prepared layout is: training draws one of its
//! sentences per epoch, validation takes its first, test all of them. `id` names the line's
//! outputs (default: its line number). Blank lines are ignored. Each line is parsed on its
//! own, so one bad line does not hide the others; files are not opened here (the caller
//! reports a missing photo against the same line number).
//!
//! [`read`] holds a whole manifest in memory (`segment`); [`ManifestIndex`] keeps only the
//! byte offset of each good line and reads it again when used (training on large manifests);
//! [`write_from_prepared`] converts a prepared split.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::data::coco_mask::{check_polygons, rles_from_segmentation, Rle};
use crate::error::{read_file, Error, Result};
use crate::image::read_mask_png;
use crate::tokenizer::{check_sentence, MAX_TEXT_BYTES};

mod index;
mod write;

pub use index::{photo_key, ManifestIndex};
pub use write::{write_from_prepared, WrittenManifest};

/// Longest manifest line accepted, bytes (a line carries a compressed RLE at most, which for
/// the largest mask accepted is well under this).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// What a line says about the ground truth.
#[derive(Clone, Debug, PartialEq)]
pub enum GroundTruth {
    /// A mask PNG (resolved path).
    Png(PathBuf),
    /// A COCO RLE, already checked to cover its frame.
    Rle(Rle),
    /// COCO polygons in photo pixels, already checked (numbers, pairs, ≥ 3 points each);
    /// rasterised at the photo's size when read.
    Polygons(Vec<Vec<f64>>),
}

/// A ground truth as grey values, row-major, at its own size (a PNG or an RLE may differ
/// from the photo; polygons are drawn at the photo's size). Foreground is non-zero; as a
/// training target a value v counts v/255.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GreyMask {
    pub grey: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

impl GroundTruth {
    /// Reads the ground truth of a photo of `width` × `height`. RLE and polygon foreground
    /// is 255; a PNG keeps its values, but one holding only 0 and 1 is scaled to 0/255.
    pub fn read(&self, width: usize, height: usize) -> Result<GreyMask> {
        let foreground = |rle: &Rle| rle.decode().into_iter().map(|v| v * 255).collect();
        match self {
            GroundTruth::Png(path) => {
                let (mut grey, width, height) = read_mask_png(path)?;
                if grey.iter().all(|&v| v <= 1) {
                    grey.iter_mut().for_each(|v| *v *= 255);
                }
                Ok(GreyMask { grey, width, height })
            }
            GroundTruth::Rle(rle) => Ok(GreyMask { grey: foreground(rle), width: rle.width(), height: rle.height() }),
            GroundTruth::Polygons(polygons) => {
                let rle = Rle::from_polygons(polygons, height, width)
                    .map_err(|e| Error::input(format!("mask_polygons: {e}")))?;
                Ok(GreyMask { grey: foreground(&rle), width, height })
            }
        }
    }

    /// Names the ground truth in messages: the PNG's path, or the field.
    pub fn describe(&self) -> String {
        match self {
            GroundTruth::Png(path) => path.display().to_string(),
            GroundTruth::Rle(_) => "mask_rle".into(),
            GroundTruth::Polygons(_) => "mask_polygons".into(),
        }
    }
}

/// One good line.
#[derive(Clone, Debug, PartialEq)]
pub struct ManifestItem {
    /// 1-based line number in the manifest.
    pub line: usize,
    /// Names the outputs: the `id` field, or the line number.
    pub id: String,
    pub image: PathBuf,
    pub sentences: Vec<String>,
    pub ground_truth: Option<GroundTruth>,
}

/// A line that could not be used: its number and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BadLine {
    pub line: usize,
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.error)
    }
}

/// Every line of a manifest, good or bad, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifest {
    pub items: Vec<ManifestItem>,
    pub bad: Vec<BadLine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    id: Option<Value>,
    image: String,
    sentences: Vec<String>,
    mask: Option<String>,
    mask_rle: Option<Value>,
    mask_polygons: Option<Value>,
}

/// Reads and parses a manifest file; relative paths are taken from its folder.
pub fn read(path: impl AsRef<Path>) -> Result<Manifest> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| Error::invalid(path, format!("not UTF-8 text: {e}")))?;
    let base = path.parent().unwrap_or(Path::new(""));
    Ok(parse(text, base))
}

/// Parses manifest text; relative paths are joined to `base`. A repeated `id` is a bad line
/// (its outputs would overwrite the first one's).
pub fn parse(text: &str, base: &Path) -> Manifest {
    let mut manifest = Manifest::default();
    let mut ids = HashSet::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        match parse_line(raw, line, base) {
            Ok(item) if !ids.insert(item.id.clone()) => {
                manifest.bad.push(BadLine { line, error: format!("id {:?} is used by an earlier line", item.id) })
            }
            Ok(item) => manifest.items.push(item),
            Err(e) => manifest.bad.push(BadLine { line, error: e.to_string() }),
        }
    }
    manifest
}

/// One line (without its newline) → an item; `line` is its 1-based number.
pub fn parse_line(raw: &str, line: usize, base: &Path) -> Result<ManifestItem> {
    if raw.len() > MAX_LINE_BYTES {
        return Err(Error::input(format!("the line has {} bytes, more than {MAX_LINE_BYTES}", raw.len())));
    }
    let parsed: Line = serde_json::from_str(raw).map_err(|e| Error::input(format!("bad JSON: {e}")))?;
    let id = match parsed.id {
        None => line.to_string(),
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => return Err(Error::input(format!("id must be a string or a number, not {other}"))),
    };
    check_id(&id)?;
    if parsed.image.is_empty() {
        return Err(Error::input("image is an empty path"));
    }
    if parsed.sentences.is_empty() {
        return Err(Error::input("sentences is empty: give at least one sentence"));
    }
    for (k, s) in parsed.sentences.iter().enumerate() {
        let whose = || format!("sentence {}", k + 1);
        check_sentence(s).map_err(|e| Error::input(format!("{}: {e}", whose())))?;
        if s.len() > MAX_TEXT_BYTES {
            return Err(Error::input(format!("{} has {} bytes, more than {MAX_TEXT_BYTES}", whose(), s.len())));
        }
    }
    let given = [parsed.mask.is_some(), parsed.mask_rle.is_some(), parsed.mask_polygons.is_some()];
    if given.iter().filter(|&&g| g).count() > 1 {
        return Err(Error::input("give one of mask, mask_rle and mask_polygons, not several"));
    }
    let ground_truth = match (parsed.mask, parsed.mask_rle, parsed.mask_polygons) {
        (Some(m), _, _) if m.is_empty() => return Err(Error::input("mask is an empty path")),
        (Some(m), _, _) => Some(GroundTruth::Png(base.join(m))),
        (_, Some(v @ Value::Object(_)), _) => {
            let mut parts = rles_from_segmentation(&v, 0, 0).map_err(|e| Error::input(format!("mask_rle: {e}")))?;
            Some(GroundTruth::Rle(parts.remove(0)))
        }
        (_, Some(_), _) => return Err(Error::input("mask_rle must be an object {\"size\": [h, w], \"counts\": ...}")),
        (_, _, Some(v)) => {
            Some(GroundTruth::Polygons(check_polygons(&v).map_err(|e| Error::input(format!("mask_polygons: {e}")))?))
        }
        (None, None, None) => None,
    };
    Ok(ManifestItem { line, id, image: base.join(parsed.image), sentences: parsed.sentences, ground_truth })
}

/// An id becomes a folder name: no separators, nothing hidden, not too long.
fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '+' | '='));
    if ok {
        Ok(())
    } else {
        Err(Error::input(format!(
            "id {id:?} cannot name a folder: use 1 to 128 letters, digits, - _ . + = (not starting with .)"
        )))
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn good_and_bad_lines_each_keep_their_number() {
        let text = concat!(
            "{\"image\": \"a.png\", \"sentences\": [\"the cup\"]}\n",
            "\n",
            "{\"image\": \"b.png\", \"sentences\": [\"\"]}\n",
            "not json\n",
            "{\"id\": 7, \"image\": \"/abs/c.png\", \"sentences\": [\"x\", \"y\"], \"mask\": \"m.png\"}\r\n",
            "{\"image\": \"d.png\", \"sentences\": [\"z\"], \"mask_rle\": {\"size\": [2, 3], \"counts\": [1, 2, 3]}}\n",
            "{\"image\": \"e.png\", \"sentences\": [\"z\"], \"mask_rle\": {\"size\": [2, 3], \"counts\": [1, 2]}}\n",
            "{\"image\": \"f.png\", \"sentences\": [\"z\"], \"colour\": 1}\n",
            "{\"id\": \"7\", \"image\": \"g.png\", \"sentences\": [\"z\"]}\n",
            "{\"id\": \"../up\", \"image\": \"g.png\", \"sentences\": [\"z\"]}\n",
            "{\"image\": \"h.png\", \"sentences\": []}\n",
        );
        let m = parse(text, Path::new("/data"));
        let lines: Vec<usize> = m.items.iter().map(|i| i.line).collect();
        assert_eq!(lines, [1, 5, 6]);
        assert_eq!(m.items[0].id, "1");
        assert_eq!(m.items[0].image, Path::new("/data/a.png"));
        assert_eq!(m.items[1].id, "7");
        assert_eq!(m.items[1].image, Path::new("/abs/c.png"));
        assert_eq!(m.items[1].ground_truth, Some(GroundTruth::Png("/data/m.png".into())));
        let Some(GroundTruth::Rle(rle)) = &m.items[2].ground_truth else { panic!("an RLE ground truth") };
        assert_eq!((rle.height(), rle.width(), rle.area()), (2, 3, 2));
        let bad: Vec<usize> = m.bad.iter().map(|b| b.line).collect();
        assert_eq!(bad, [3, 4, 7, 8, 9, 10, 11]);
        assert!(m.bad[0].error.contains("sentence 1: empty sentence"), "{}", m.bad[0]);
        assert!(m.bad[1].error.starts_with("bad JSON"), "{}", m.bad[1]);
        assert!(m.bad[2].error.contains("RLE counts add up to 3"), "{}", m.bad[2]);
        assert!(m.bad[3].error.contains("unknown field `colour`"), "{}", m.bad[3]);
        assert!(m.bad[4].error.contains("used by an earlier line"), "{}", m.bad[4]);
        assert!(m.bad[5].error.contains("cannot name a folder"), "{}", m.bad[5]);
        assert!(m.bad[6].error.contains("sentences is empty"), "{}", m.bad[6]);
        assert_eq!(m.bad[0].to_string(), format!("line 3: {}", m.bad[0].error));
    }

    #[test]
    fn compressed_rle_is_read_as_pycocotools_writes_it() {
        let rle = Rle::new(3, 2, vec![1, 4, 1]).unwrap();
        let line = format!(
            "{{\"image\": \"a.png\", \"sentences\": [\"a\"], \"mask_rle\": {{\"size\": [3, 2], \"counts\": \"{}\"}}}}",
            rle.to_compressed().replace('\\', "\\\\").replace('"', "\\\"")
        );
        let item = parse_line(&line, 1, Path::new("")).unwrap();
        assert_eq!(item.ground_truth, Some(GroundTruth::Rle(rle)));
    }
}
