//! The REFER download layout, read as the REFER API (`refer.py`) reads it:
//!
//! ```text
//! <root>/<refer_dir>/refs(<split_by>).p   pickle: list of ref dicts (Python 2 byte strings)
//! <root>/<refer_dir>/instances.json       COCO: images, annotations, categories
//! <root>/images/train2014/*.jpg
//! ```

use super::coco_mask::{count_mask, rles_from_segmentation, CountMask};
use super::splits::{resolve_refer, DATASETS};
use crate::error::{read_file, Error, Result};
use crate::pickle::{self, Value};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One referring expression of a ref.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferSentence {
    pub sent_id: i64,
    /// The tokenised, lower-cased sentence the official code trains on.
    pub sent: String,
    /// The sentence as written by the annotator, when the pickle has it.
    pub raw: Option<String>,
}

/// One ref: an annotated object and its expressions.
#[derive(Clone, Debug, PartialEq)]
pub struct Ref {
    pub ref_id: i64,
    pub ann_id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `train`, `val`, `testA`, `testB`, `test`.
    pub split: String,
    pub sentences: Vec<ReferSentence>,
}

/// A COCO image record (sizes in pixels).
#[derive(Clone, Debug, Deserialize)]
pub struct CocoImage {
    pub id: i64,
    pub file_name: String,
    pub height: u64,
    pub width: u64,
}

/// A COCO annotation; `segmentation` is kept as JSON (polygons or RLE).
#[derive(Clone, Debug, Deserialize)]
pub struct CocoAnnotation {
    pub id: i64,
    pub image_id: i64,
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels, fractional.
    pub bbox: Vec<f64>,
    pub segmentation: serde_json::Value,
    #[serde(default)]
    pub iscrowd: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct CocoCategory {
    pub id: i64,
    pub name: String,
}

#[derive(Deserialize)]
struct Instances {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

/// Which data set a REFER folder makes and the splits `prepare` writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferSource {
    /// Name in the prepared layout (`refcocog_u`, or the folder's own name).
    pub name: String,
    /// Folder under the root: `refcoco`, `refcoco+`, `refcocog`, ...
    pub refer_dir: String,
    /// `refs(<split_by>).p`.
    pub split_by: String,
    /// The official `data_process.py` list for the known data sets; for any
    /// other folder the distinct `split` values of its refs, in order.
    pub splits: Vec<String>,
    /// The folder under `<root>/images/` with the pictures.
    pub image_dir: String,
    /// Pictures whose refs `prepare` leaves out, as the official script does.
    pub excluded_images: Vec<String>,
}

impl ReferSource {
    /// A data set of the table ([`resolve_refer`]), or any other folder named
    /// by `dataset` when `split_by` is given (e.g. the synthetic set).
    pub fn resolve(dataset: &str, split_by: Option<&str>) -> Result<ReferSource> {
        match (resolve_refer(dataset, split_by), split_by) {
            (Ok(spec), _) => Ok(ReferSource {
                name: spec.name.to_string(),
                refer_dir: spec.refer_dir.to_string(),
                split_by: spec.split_by.to_string(),
                splits: spec.prepare_splits.iter().map(|s| s.to_string()).collect(),
                image_dir: spec.image_dir.to_string(),
                excluded_images: spec.excluded_images.iter().map(|s| s.to_string()).collect(),
            }),
            (Err(e), _) if DATASETS.iter().any(|d| d.name == dataset || d.refer_dir == dataset) => Err(e),
            (Err(_), Some(by)) if is_plain_name(dataset) && is_plain_name(by) => Ok(ReferSource {
                name: dataset.to_string(),
                refer_dir: dataset.to_string(),
                split_by: by.to_string(),
                splits: Vec::new(),
                image_dir: super::splits::COCO_IMAGES.to_string(),
                excluded_images: Vec::new(),
            }),
            (Err(e), _) => Err(Error::input(format!("{e} (another REFER folder needs an explicit split_by)"))),
        }
    }
}

/// One plain path component: no separators, not `.`/`..`, not empty.
pub(crate) fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '\\', '\0']) && s != "." && s != ".."
}

/// Refuses the official LMDB files (legacy pyarrow records), with directions.
/// Checks `path`, its entries, and `path/<dataset>`'s entries.
pub fn reject_lmdb(path: &Path, dataset: &str) -> Result<()> {
    let is_lmdb =
        |p: &Path| p.extension().is_some_and(|e| e == "lmdb") || p.file_name().is_some_and(|n| n == "data.mdb");
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
    };
    let mut candidates = vec![path.to_path_buf()];
    candidates.extend(entries(path));
    if is_plain_name(dataset) {
        candidates.extend(entries(&path.join(dataset)));
    }
    match candidates.iter().find(|p| is_lmdb(p)) {
        None => Ok(()),
        Some(found) => Err(Error::invalid(
            found,
            "this is an official LMDB (legacy pyarrow records from tools/folder2lmdb.py), which detris does not read. \
             Point at a REFER download (<root>/<dataset>/refs(<split_by>).p, <root>/<dataset>/instances.json, \
             <root>/images/train2014/) or at a prepared folder (<root>/anns/<dataset>/<split>.json, \
             <root>/masks/<dataset>/<ref_id>.png, <root>/images/train2014/); `detris data prepare` makes the \
             second from the first",
        )),
    }
}

/// A loaded REFER data set. Lookups by id keep the last record with that id,
/// as the REFER API's dicts do.
pub struct Refer {
    pub source: ReferSource,
    pub root: PathBuf,
    /// The refs in pickle order.
    pub refs: Vec<Ref>,
    pub categories: Vec<CocoCategory>,
    images: HashMap<i64, CocoImage>,
    annotations: HashMap<i64, CocoAnnotation>,
    ref_index: HashMap<i64, usize>,
    refs_path: PathBuf,
    instances_path: PathBuf,
}

impl Refer {
    /// Loads `<root>/<refer_dir>/refs(<split_by>).p` and `instances.json`;
    /// `dataset`/`split_by` as [`resolve_refer`] takes them. Every ref's
    /// annotation and image must exist.
    pub fn load(root: &Path, dataset: &str, split_by: Option<&str>) -> Result<Refer> {
        reject_lmdb(root, dataset)?;
        let mut source = ReferSource::resolve(dataset, split_by)?;
        let dir = root.join(&source.refer_dir);
        let refs_path = dir.join(format!("refs({}).p", source.split_by));
        let instances_path = dir.join("instances.json");
        let refs = parse_refs(&read_file(&refs_path)?).map_err(|e| e.in_file(&refs_path))?;
        let instances: Instances = serde_json::from_slice(&read_file(&instances_path)?)
            .map_err(|e| Error::invalid(&instances_path, format!("not COCO instances: {e}")))?;
        if source.splits.is_empty() {
            for r in &refs {
                if !source.splits.contains(&r.split) {
                    source.splits.push(r.split.clone());
                }
            }
        }
        let refer = Refer {
            source,
            root: root.to_path_buf(),
            ref_index: refs.iter().enumerate().map(|(i, r)| (r.ref_id, i)).collect(),
            refs,
            categories: instances.categories,
            images: instances.images.into_iter().map(|i| (i.id, i)).collect(),
            annotations: instances.annotations.into_iter().map(|a| (a.id, a)).collect(),
            refs_path,
            instances_path,
        };
        for r in &refer.refs {
            refer.annotation(r)?;
            refer.image(r)?;
        }
        Ok(refer)
    }

    /// `getRefIds(split=...)` followed by `Refs[ref_id]`, as `data_process.py`
    /// does: pickle order; `testA`/`testB`/`testC` take every ref whose split
    /// contains that letter, `test` every split containing "test",
    /// `train`/`val`/`testAB`/... exact matches.
    pub fn refs_in_split(&self, split: &str) -> Result<Vec<&Ref>> {
        let keep: Box<dyn Fn(&str) -> bool> = match split {
            "testA" | "testB" | "testC" => {
                let letter = &split[4..];
                Box::new(move |s: &str| s.contains(letter))
            }
            "testAB" | "testBC" | "testAC" | "train" | "val" => Box::new(move |s: &str| s == split),
            "test" => Box::new(|s: &str| s.contains("test")),
            _ => return Err(Error::input(format!("REFER has no split '{split}'"))),
        };
        Ok(self
            .refs
            .iter()
            .filter(|r| keep(&r.split))
            .filter_map(|r| self.ref_index.get(&r.ref_id).and_then(|&i| self.refs.get(i)))
            .collect())
    }

    /// The annotation a ref points at.
    pub fn annotation(&self, r: &Ref) -> Result<&CocoAnnotation> {
        self.annotations.get(&r.ann_id).ok_or_else(|| {
            Error::invalid(&self.instances_path, format!("ref {}: no annotation with id {}", r.ref_id, r.ann_id))
        })
    }

    /// The image a ref is on.
    pub fn image(&self, r: &Ref) -> Result<&CocoImage> {
        self.images.get(&r.image_id).ok_or_else(|| {
            Error::invalid(&self.instances_path, format!("ref {}: no image with id {}", r.ref_id, r.image_id))
        })
    }

    /// `getRefBox`: the annotation's `[x, y, width, height]`.
    pub fn ref_box(&self, r: &Ref) -> Result<[f64; 4]> {
        let ann = self.annotation(r)?;
        ann.bbox.as_slice().try_into().map_err(|_| {
            Error::invalid(
                &self.instances_path,
                format!("annotation {}: bbox has {} numbers, not 4", ann.id, ann.bbox.len()),
            )
        })
    }

    /// `getMask`: the annotation's parts rasterised at the image's size and
    /// summed (a pixel holds the number of parts covering it). The REFER API
    /// handles polygons only; an RLE segmentation is decoded too here, and must
    /// have the image's size.
    pub fn mask(&self, r: &Ref) -> Result<CountMask> {
        let (ann, img) = (self.annotation(r)?, self.image(r)?);
        let context =
            |e: Error| Error::invalid(&self.instances_path, format!("ref {} (annotation {}): {e}", r.ref_id, ann.id));
        let (h, w) = (usize::try_from(img.height), usize::try_from(img.width));
        let (Ok(h), Ok(w)) = (h, w) else {
            return Err(context(Error::input("image size does not fit in memory")));
        };
        let parts = rles_from_segmentation(&ann.segmentation, h, w).map_err(context)?;
        count_mask(&parts, h, w).map_err(context)
    }

    /// `<root>/images/<train2014 or saiapr_tc-12>/<file_name>`.
    pub fn image_path(&self, image: &CocoImage) -> PathBuf {
        self.root.join("images").join(&self.source.image_dir).join(&image.file_name)
    }

    /// The COCO file the images and annotations came from.
    pub fn instances_path(&self) -> &Path {
        &self.instances_path
    }

    /// The pickle the refs came from.
    pub fn refs_path(&self) -> &Path {
        &self.refs_path
    }
}

/// The ref list of a `refs(*).p` pickle.
fn parse_refs(bytes: &[u8]) -> Result<Vec<Ref>> {
    let value = pickle::parse(bytes)?;
    let list =
        value.as_list().ok_or_else(|| Error::input(format!("expected a list of refs, found {}", value.kind())))?;
    list.iter()
        .enumerate()
        .map(|(i, r)| parse_ref(r).map_err(|what| Error::input(format!("ref #{i}: {what}"))))
        .collect()
}

fn parse_ref(r: &Value) -> std::result::Result<Ref, String> {
    let sentences = field(r, "sentences")?
        .as_list()
        .ok_or("'sentences' is not a list")?
        .iter()
        .enumerate()
        .map(|(j, s)| parse_sentence(s).map_err(|what| format!("sentence #{j}: {what}")))
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(Ref {
        ref_id: int(r, "ref_id")?,
        ann_id: int(r, "ann_id")?,
        image_id: int(r, "image_id")?,
        category_id: int(r, "category_id")?,
        split: text(r, "split")?,
        sentences,
    })
}

fn parse_sentence(s: &Value) -> std::result::Result<ReferSentence, String> {
    Ok(ReferSentence {
        sent_id: int(s, "sent_id")?,
        sent: text(s, "sent")?,
        raw: s.get("raw").and_then(Value::as_str).map(str::to_string),
    })
}

fn field<'a>(v: &'a Value, key: &str) -> std::result::Result<&'a Value, String> {
    v.get(key).ok_or_else(|| format!("no '{key}' in {}", v.kind()))
}

fn int(v: &Value, key: &str) -> std::result::Result<i64, String> {
    let f = field(v, key)?;
    f.as_i64().ok_or_else(|| format!("'{key}' is {}, not an int", f.kind()))
}

fn text(v: &Value, key: &str) -> std::result::Result<String, String> {
    let f = field(v, key)?;
    f.as_str().map(str::to_string).ok_or_else(|| format!("'{key}' is {}, not UTF-8 text", f.kind()))
}

#[cfg(test)]
pub(crate) mod tests;
