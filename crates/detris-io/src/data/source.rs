//! One data model over two sources: the refs of a prepared split and the good lines of a
//! manifest. Both are a list of refs (a photo, its sentences, one ground truth) indexed
//! 0..len; the loader, its epoch plans, the distributed sampler and evaluation see only
//! this list, so they work the same over either source.
//!
//! A prepared split is held in memory as it is read (one JSON file); a manifest keeps only
//! the byte offset of each line ([`ManifestIndex`]) and the ref is read when used.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::manifest::{photo_key, GreyMask, GroundTruth, ManifestIndex};
use super::prepared::{ann_path, image_path_of, mask_path, read_split, RefRecord};
use crate::error::{Error, Result};
use crate::image::read_mask_png;

/// Where a ref comes from, for messages and for skipped-sample reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum Origin {
    /// Entry `index` (0-based) of a prepared split file, whose segment id is `segment_id`.
    Prepared { split_file: PathBuf, index: usize, segment_id: String },
    /// Line `line` (1-based) of a manifest.
    Manifest { manifest: PathBuf, line: usize },
    /// A ref built in memory (tests, tools).
    Memory { index: usize },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Prepared { split_file, index, segment_id } => {
                write!(f, "{} entry {index} (ref {segment_id})", split_file.display())
            }
            Origin::Manifest { manifest, line } => write!(f, "{} line {line}", manifest.display()),
            Origin::Memory { index } => write!(f, "ref {index}"),
        }
    }
}

/// Where a ref's ground truth is read from.
#[derive(Clone, Debug, PartialEq)]
pub enum MaskSource {
    /// A prepared-layout PNG, values kept as stored (part count × 255), as the official
    /// loader reads it.
    PreparedPng(PathBuf),
    /// A manifest's `mask`, `mask_rle` or `mask_polygons` (see [`GroundTruth::read`]).
    Manifest(GroundTruth),
}

impl MaskSource {
    /// The grey mask for a photo of `width` × `height` (at the mask's own size).
    pub fn read(&self, width: usize, height: usize) -> Result<GreyMask> {
        match self {
            MaskSource::PreparedPng(path) => {
                let (grey, width, height) = read_mask_png(path)?;
                Ok(GreyMask { grey, width, height })
            }
            MaskSource::Manifest(truth) => truth.read(width, height),
        }
    }

    /// Names the ground truth in messages.
    pub fn describe(&self) -> String {
        match self {
            MaskSource::PreparedPng(path) => path.display().to_string(),
            MaskSource::Manifest(truth) => truth.describe(),
        }
    }
}

/// One ref, as the loader needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderRef {
    pub image: PathBuf,
    pub mask: MaskSource,
    /// Names the ref in reports: the prepared `segment_id` (the ref id), or the manifest id.
    pub segment_id: String,
    pub sentences: Vec<String>,
    pub origin: Origin,
}

impl LoaderRef {
    /// The ref of entry `index` of a prepared split of `dataset` under `root`.
    pub fn from_record(root: &Path, dataset: &str, split: &str, index: usize, record: &RefRecord) -> LoaderRef {
        LoaderRef {
            image: image_path_of(root, dataset, &record.img_name),
            mask: MaskSource::PreparedPng(mask_path(root, dataset, &record.segment_id)),
            segment_id: record.segment_id.to_string(),
            sentences: record.sentences.iter().map(|s| s.sent.clone()).collect(),
            origin: Origin::Prepared {
                split_file: ann_path(root, dataset, split),
                index,
                segment_id: record.segment_id.to_string(),
            },
        }
    }
}

/// The refs of `root/anns/<dataset>/<split>.json` ([`read_split`]), with the image under
/// `root/images/<train2014 or the set's folder>/` and the mask at `root/masks/<dataset>/<segment_id>.png`.
pub fn prepared_refs(root: &Path, dataset: &str, split: &str) -> Result<Vec<LoaderRef>> {
    Ok(read_split(root, dataset, split)?
        .iter()
        .enumerate()
        .map(|(i, r)| LoaderRef::from_record(root, dataset, split, i, r))
        .collect())
}

/// The refs a loader draws from.
#[derive(Clone, Debug)]
pub enum RefSource {
    /// Refs in memory: a prepared split, or any list.
    Refs(Arc<Vec<LoaderRef>>),
    /// The good lines of a manifest, read when used.
    Manifest(ManifestIndex),
}

impl RefSource {
    /// A prepared split ([`prepared_refs`]).
    pub fn prepared(root: &Path, dataset: &str, split: &str) -> Result<RefSource> {
        Ok(RefSource::Refs(Arc::new(prepared_refs(root, dataset, split)?)))
    }

    /// The lines of a manifest that have a ground truth; the others are in
    /// [`RefSource::bad_lines`]. Errors only when the file cannot be read.
    pub fn manifest(path: &Path) -> Result<RefSource> {
        Ok(RefSource::Manifest(ManifestIndex::open(path, true)?))
    }

    pub fn len(&self) -> usize {
        match self {
            RefSource::Refs(refs) => refs.len(),
            RefSource::Manifest(index) => index.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sentences of ref `r`.
    pub fn sentence_count(&self, r: usize) -> usize {
        match self {
            RefSource::Refs(refs) => refs[r].sentences.len(),
            RefSource::Manifest(index) => index.sentence_count(r),
        }
    }

    /// Sentences of every ref, in order (what an epoch plan needs).
    pub fn sentence_counts(&self) -> Vec<usize> {
        (0..self.len()).map(|r| self.sentence_count(r)).collect()
    }

    /// Ref `r`; for a manifest its line is read again. Errors name the manifest line.
    pub fn get(&self, r: usize) -> Result<Cow<'_, LoaderRef>> {
        match self {
            RefSource::Refs(refs) => Ok(Cow::Borrowed(&refs[r])),
            RefSource::Manifest(index) => {
                let item = index.item(r)?;
                let origin = self.origin(r);
                let mask = item.ground_truth.ok_or_else(|| Error::input(format!("{origin}: no ground truth")))?;
                Ok(Cow::Owned(LoaderRef {
                    image: item.image,
                    mask: MaskSource::Manifest(mask),
                    segment_id: item.id,
                    sentences: item.sentences,
                    origin,
                }))
            }
        }
    }

    /// Where ref `r` comes from, without reading it.
    pub fn origin(&self, r: usize) -> Origin {
        match self {
            RefSource::Refs(refs) => refs[r].origin.clone(),
            RefSource::Manifest(index) => {
                Origin::Manifest { manifest: index.path().to_path_buf(), line: index.line_number(r) }
            }
        }
    }

    /// A key of ref `r`'s photo that does not depend on where the data lies: the
    /// [`photo_key`] of the manifest's `image` as written, or of the prepared image name.
    pub fn photo_key(&self, r: usize) -> u64 {
        match self {
            RefSource::Refs(refs) => {
                let image = &refs[r].image;
                photo_key(image.file_name().map_or(image.as_path(), Path::new))
            }
            RefSource::Manifest(index) => index.photo_key(r),
        }
    }

    /// The refs `r` with `keep(r)`, in order.
    pub fn filter(&self, mut keep: impl FnMut(usize) -> bool) -> RefSource {
        match self {
            RefSource::Refs(refs) => RefSource::Refs(Arc::new(
                refs.iter().enumerate().filter(|&(r, _)| keep(r)).map(|(_, x)| x.clone()).collect(),
            )),
            RefSource::Manifest(index) => RefSource::Manifest(index.subset(keep)),
        }
    }

    /// Keeps the first `n` refs (`--limit`).
    pub fn truncate(&mut self, n: usize) {
        match self {
            RefSource::Refs(refs) => Arc::make_mut(refs).truncate(n),
            RefSource::Manifest(index) => index.truncate(n),
        }
    }

    /// A manifest's lines left out at open (none for a prepared split).
    pub fn bad_lines(&self) -> &[super::manifest::BadLine] {
        match self {
            RefSource::Refs(_) => &[],
            RefSource::Manifest(index) => index.bad_lines(),
        }
    }

    /// What the source is, for messages: the manifest, or the first ref's split file.
    pub fn describe(&self) -> String {
        match self {
            RefSource::Manifest(index) => index.path().display().to_string(),
            RefSource::Refs(refs) => match refs.first().map(|r| &r.origin) {
                Some(Origin::Prepared { split_file, .. }) => split_file.display().to_string(),
                _ => format!("{} refs", refs.len()),
            },
        }
    }
}

impl From<Vec<LoaderRef>> for RefSource {
    fn from(refs: Vec<LoaderRef>) -> RefSource {
        RefSource::Refs(Arc::new(refs))
    }
}

#[cfg(test)]
mod tests;
