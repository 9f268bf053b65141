//! A prepared split as a manifest: one line per record, in order, so that the manifest
//! trains as the split does (same refs, same sentences, same masks, same batches).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::parse_line;
use crate::data::prepared::{image_path_of, mask_path, read_split};
use crate::error::{Error, Result};

/// What [`write_from_prepared`] wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WrittenManifest {
    pub path: PathBuf,
    pub lines: usize,
    pub sentences: usize,
}

#[derive(Serialize)]
struct Line<'a> {
    id: String,
    image: String,
    sentences: Vec<&'a str>,
    mask: String,
}

/// Writes `root/anns/<dataset>/<split>.json` as the manifest `out`: `id` the segment id,
/// `image` and `mask` the prepared files, relative to `out`'s folder when they lie under it
/// (absolute otherwise). Every line is checked to parse back to the same ref; a record
/// that cannot (an id that cannot name a folder, an empty sentence) is an error naming it.
pub fn write_from_prepared(root: &Path, dataset: &str, split: &str, out: &Path) -> Result<WrittenManifest> {
    let records = read_split(root, dataset, split)?;
    let folder = out.parent().unwrap_or(Path::new(""));
    let mut text = String::new();
    let mut sentences = 0;
    for (i, r) in records.iter().enumerate() {
        let line = Line {
            id: r.segment_id.to_string(),
            image: relative_to(folder, &image_path_of(root, dataset, &r.img_name))?,
            sentences: r.sentences.iter().map(|s| s.sent.as_str()).collect(),
            mask: relative_to(folder, &mask_path(root, dataset, &r.segment_id))?,
        };
        let json = serde_json::to_string(&line).map_err(|e| Error::input(format!("cannot encode JSON: {e}")))?;
        parse_line(&json, i + 1, folder).map_err(|e| {
            Error::input(format!("{split} entry {i} (ref {}) cannot be a manifest line: {e}", r.segment_id))
        })?;
        sentences += r.sentences.len();
        text.push_str(&json);
        text.push('\n');
    }
    let tmp = out.with_extension("jsonl.tmp");
    std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, out))
        .map_err(|e| Error::io(out, e))?;
    Ok(WrittenManifest { path: out.to_path_buf(), lines: records.len(), sentences })
}

/// `path` relative to `folder` when under it, else absolute; as UTF-8 text for JSON.
fn relative_to(folder: &Path, path: &Path) -> Result<String> {
    let chosen = match path.strip_prefix(folder) {
        Ok(rel) => rel.to_path_buf(),
        Err(_) => std::path::absolute(path).map_err(|e| Error::io(path, e))?,
    };
    chosen.to_str().map(str::to_string).ok_or_else(|| Error::input(format!("{} is not UTF-8", path.display())))
}
