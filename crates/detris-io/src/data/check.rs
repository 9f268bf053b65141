//! `detris data check`: what a data source holds and what is wrong with it, as a plain
//! report (serde) that the CLI prints as a table or JSON. Nothing is printed here.
//!
//! Works on any [`RefSource`] (a manifest or a prepared split): counts, the manifest's bad
//! lines, refs whose photo or mask cannot be read, photo sizes from the file headers (no
//! decoding), mask areas (masks decoded), sentences cut at the word length, words outside a
//! model's vocabulary, duplicate ids; [`shared_photos`] lists photos of a train and a val
//! source that are the same file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;
use serde::Serialize;

use super::manifest::BadLine;
use super::source::{Origin, RefSource};
use crate::image::photo_size;
use crate::tokenizer::ClipTokenizer;

/// What to look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Token ids per sentence the model takes (17 for RefCOCO configs).
    pub word_len: usize,
    /// The token ids a model knows (a pruned vocabulary); `None`: the whole CLIP vocabulary.
    pub vocabulary: Option<HashSet<i64>>,
    /// Read every photo's header for its size.
    pub photo_sizes: bool,
    /// Decode every mask for its area (needs the photo sizes for polygons).
    pub mask_areas: bool,
    /// Examples kept in each list of the report.
    pub max_listed: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions { word_len: 17, vocabulary: None, photo_sizes: true, mask_areas: true, max_listed: 20 }
    }
}

/// Something wrong with one ref.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub origin: Origin,
    pub what: String,
}

/// One sentence worth showing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SentenceNote {
    pub origin: Origin,
    /// 1-based.
    pub sentence: usize,
    pub text: String,
    /// Token ids from SOT to EOT, before any cut.
    pub tokens: usize,
}

/// A list that may be longer than what is shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Listed<T> {
    pub count: usize,
    pub examples: Vec<T>,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed { count: 0, examples: Vec::new() }
    }
}

impl<T> Listed<T> {
    fn push(&mut self, item: T, max: usize) {
        self.count += 1;
        if self.examples.len() < max {
            self.examples.push(item);
        }
    }
}

/// Photo sizes, from the headers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PhotoSizes {
    pub read: usize,
    pub min_width: u32,
    pub max_width: u32,
    pub min_height: u32,
    pub max_height: u32,
    pub distinct: usize,
    /// The commonest sizes, most photos first: (width, height, photos).
    pub most_common: Vec<(u32, u32, usize)>,
}

/// Mask areas as fractions of the mask's frame.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MaskAreas {
    pub measured: usize,
    /// Masks without any foreground pixel (also listed as problems).
    pub empty: usize,
    pub min_fraction: f64,
    pub median_fraction: f64,
    pub max_fraction: f64,
    /// Masks whose size is not the photo's (resized, nearest, when loaded).
    pub resized: usize,
    /// PNG masks with values other than 0 and 255 (254: two parts in the prepared layout),
    /// which train as soft targets v/255.
    pub soft: usize,
}

/// Words outside the model's vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutOfVocabulary {
    /// Sentences with at least one such word.
    pub sentences: Listed<SentenceNote>,
    /// The tokens (as text) and how often they occur, commonest first.
    pub tokens: Vec<(String, usize)>,
}

/// An id given to more than one ref.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DuplicateId {
    pub id: String,
    pub origins: Vec<Origin>,
}

/// The report of [`check`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CheckReport {
    /// The manifest, or the prepared split file.
    pub source: String,
    /// Non-blank manifest lines, good and bad (absent for a prepared split).
    pub lines: Option<usize>,
    pub refs: usize,
    pub sentences: usize,
    pub photos: usize,
    /// Manifest lines left out, with their numbers and why.
    pub bad_lines: Vec<BadLine>,
    /// Refs whose photo or mask cannot be read, or whose mask is empty.
    pub problems: Listed<Problem>,
    pub photo_sizes: Option<PhotoSizes>,
    pub mask_areas: Option<MaskAreas>,
    pub word_len: usize,
    /// Sentences longer than `word_len` token ids, cut when tokenised.
    pub truncated: Listed<SentenceNote>,
    /// Present when a vocabulary was given.
    pub out_of_vocabulary: Option<OutOfVocabulary>,
    pub duplicate_ids: Listed<DuplicateId>,
}

/// What one ref contributes.
#[derive(Default)]
struct RefFacts {
    id: String,
    photo: Option<PathBuf>,
    sentences: usize,
    problems: Vec<String>,
    /// (area, frame pixels, resized, soft).
    mask: Option<(u64, u64, bool, bool)>,
    truncated: Vec<SentenceNote>,
    out_of_vocabulary: Vec<(SentenceNote, Vec<i64>)>,
}

/// Checks every ref of `source` (in parallel); never fails: what cannot be read is reported.
pub fn check(source: &RefSource, opts: &CheckOptions) -> CheckReport {
    let facts: Vec<RefFacts> = (0..source.len()).into_par_iter().map(|r| ref_facts(source, r, opts)).collect();
    let max = opts.max_listed;
    let lines = match source {
        RefSource::Manifest(index) => Some(index.lines()),
        RefSource::Refs(_) => None,
    };
    let mut report = CheckReport {
        source: source.describe(),
        lines,
        refs: source.len(),
        sentences: facts.iter().map(|f| f.sentences).sum(),
        photos: 0,
        bad_lines: source.bad_lines().to_vec(),
        problems: Listed::default(),
        photo_sizes: None,
        mask_areas: None,
        word_len: opts.word_len,
        truncated: Listed::default(),
        out_of_vocabulary: opts.vocabulary.as_ref().map(|_| OutOfVocabulary::default()),
        duplicate_ids: Listed::default(),
    };
    let mut ids: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut oov_tokens: HashMap<i64, usize> = HashMap::new();
    let mut areas = Vec::new();
    let (mut resized, mut soft) = (0, 0);
    for (r, f) in facts.iter().enumerate() {
        ids.entry(&f.id).or_default().push(r);
        for what in &f.problems {
            report.problems.push(Problem { origin: source.origin(r), what: what.clone() }, max);
        }
        if let Some((area, pixels, was_resized, was_soft)) = f.mask {
            areas.push(area as f64 / pixels.max(1) as f64);
            resized += usize::from(was_resized);
            soft += usize::from(was_soft);
        }
        for note in &f.truncated {
            report.truncated.push(note.clone(), max);
        }
        if let Some(oov) = report.out_of_vocabulary.as_mut() {
            for (note, tokens) in &f.out_of_vocabulary {
                oov.sentences.push(note.clone(), max);
                for &t in tokens {
                    *oov_tokens.entry(t).or_default() += 1;
                }
            }
        }
    }
    for (id, refs) in ids.into_iter().filter(|(_, refs)| refs.len() > 1) {
        let origins = refs.iter().map(|&r| source.origin(r)).collect();
        report.duplicate_ids.push(DuplicateId { id: id.to_string(), origins }, max);
    }
    if let Some(oov) = report.out_of_vocabulary.as_mut() {
        let tokenizer = ClipTokenizer::global();
        let mut tokens: Vec<(String, usize)> = oov_tokens
            .into_iter()
            .map(|(t, n)| (tokenizer.decode(&[t]).map_or_else(|_| format!("#{t}"), |s| s.trim().to_string()), n))
            .collect();
        tokens.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        oov.tokens = tokens;
    }
    let photos: HashSet<&Path> = facts.iter().filter_map(|f| f.photo.as_deref()).collect();
    report.photos = photos.len();
    if opts.photo_sizes {
        report.photo_sizes = Some(photo_sizes(&photos.into_iter().collect::<Vec<_>>()));
    }
    if opts.mask_areas {
        areas.sort_by(f64::total_cmp);
        let at = |q: f64| areas.get(((areas.len().saturating_sub(1)) as f64 * q).round() as usize).copied();
        report.mask_areas = Some(MaskAreas {
            measured: areas.len(),
            empty: areas.iter().filter(|&&a| a == 0.0).count(),
            min_fraction: at(0.0).unwrap_or(0.0),
            median_fraction: at(0.5).unwrap_or(0.0),
            max_fraction: at(1.0).unwrap_or(0.0),
            resized,
            soft,
        });
    }
    report
}

fn ref_facts(source: &RefSource, r: usize, opts: &CheckOptions) -> RefFacts {
    let mut facts = RefFacts { sentences: source.sentence_count(r), ..RefFacts::default() };
    let item = match source.get(r) {
        Ok(item) => item,
        Err(e) => {
            facts.problems.push(e.to_string());
            return facts;
        }
    };
    facts.id = item.segment_id.clone();
    facts.photo = Some(normal_path(&item.image));
    let tokenizer = ClipTokenizer::global();
    for (k, text) in item.sentences.iter().enumerate() {
        let note = |tokens| SentenceNote { origin: item.origin.clone(), sentence: k + 1, text: text.clone(), tokens };
        let Ok(tokens) = tokenizer.tokenize(text, opts.word_len.max(2)) else { continue };
        if tokens.truncated {
            facts.truncated.push(note(tokens.n_ids));
        }
        if let (Some(vocabulary), Ok(ids)) = (&opts.vocabulary, tokenizer.encode(text)) {
            let mut outside: Vec<i64> = ids.into_iter().map(i64::from).filter(|id| !vocabulary.contains(id)).collect();
            outside.dedup();
            if !outside.is_empty() {
                facts.out_of_vocabulary.push((note(tokens.n_ids), outside));
            }
        }
    }
    if !(opts.photo_sizes || opts.mask_areas) {
        return facts;
    }
    let (width, height) = match photo_size(&item.image) {
        Ok((w, h)) => (w as usize, h as usize),
        Err(e) => {
            facts.problems.push(format!("photo: {e}"));
            return facts;
        }
    };
    if opts.mask_areas {
        match item.mask.read(width, height) {
            Ok(mask) => {
                let area = mask.grey.iter().filter(|&&v| v != 0).count() as u64;
                if area == 0 {
                    facts.problems.push(format!("mask {} is empty", item.mask.describe()));
                }
                let soft = mask.grey.iter().any(|&v| !matches!(v, 0 | 254 | 255));
                let resized = (mask.width, mask.height) != (width, height);
                facts.mask = Some((area, (mask.width * mask.height) as u64, resized, soft));
            }
            Err(e) => facts.problems.push(format!("mask: {e}")),
        }
    }
    facts
}

/// Photo sizes from the headers of `photos` (in parallel); unreadable ones are left out
/// here (each ref reports its own).
fn photo_sizes(photos: &[&Path]) -> PhotoSizes {
    let sizes: Vec<(u32, u32)> = photos.par_iter().filter_map(|p| photo_size(p).ok()).collect();
    let mut counts: HashMap<(u32, u32), usize> = HashMap::new();
    for &s in &sizes {
        *counts.entry(s).or_default() += 1;
    }
    let mut most_common: Vec<(u32, u32, usize)> = counts.iter().map(|(&(w, h), &n)| (w, h, n)).collect();
    most_common.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| (a.0, a.1).cmp(&(b.0, b.1))));
    most_common.truncate(5);
    PhotoSizes {
        read: sizes.len(),
        min_width: sizes.iter().map(|s| s.0).min().unwrap_or(0),
        max_width: sizes.iter().map(|s| s.0).max().unwrap_or(0),
        min_height: sizes.iter().map(|s| s.1).min().unwrap_or(0),
        max_height: sizes.iter().map(|s| s.1).max().unwrap_or(0),
        distinct: counts.len(),
        most_common,
    }
}

/// An absolute, lexically normal path (`.` dropped, `x/..` folded) to compare photos of
/// two sources; not resolved through links.
fn normal_path(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Photos that refs of both `train` and `val` use (the same file by its normal path),
/// sorted: a validation that sees training photos measures memory, not generalisation.
pub fn shared_photos(train: &RefSource, val: &RefSource) -> Vec<PathBuf> {
    let photos = |s: &RefSource| -> HashSet<PathBuf> {
        (0..s.len()).into_par_iter().filter_map(|r| s.get(r).ok().map(|x| normal_path(&x.image))).collect()
    };
    let (a, b) = (photos(train), photos(val));
    let mut shared: Vec<PathBuf> = a.intersection(&b).cloned().collect();
    shared.sort();
    shared
}
