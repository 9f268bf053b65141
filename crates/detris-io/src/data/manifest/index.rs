//! A manifest opened for training: every line is parsed once, in a stream, and only the
//! byte range of each good line and a few numbers about it are kept (32 bytes a ref);
//! the line is read and parsed again when its sample is loaded. So a large manifest opens
//! at the speed of JSON parsing, its memory is that of the offsets, and masks are decoded
//! only when used.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{parse_line, BadLine, ManifestItem, MAX_LINE_BYTES};
use crate::error::{Error, Result};

/// Where one good line is and what the plan and the splits need of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Entry {
    offset: u64,
    len: u32,
    line: u32,
    sentences: u32,
    /// [`photo_key`] of the line's `image` as written.
    photo: u64,
}

/// The good lines of a manifest by byte offset, and its bad lines.
#[derive(Clone, Debug)]
pub struct ManifestIndex {
    path: Arc<Path>,
    base: PathBuf,
    entries: Vec<Entry>,
    bad: Vec<BadLine>,
    /// Non-blank lines of the file.
    lines: usize,
}

impl ManifestIndex {
    /// Parses every line of the manifest at `path`. Bad lines (unparsable, a repeated id,
    /// and with `need_ground_truth` a line without `mask`, `mask_rle` or `mask_polygons`)
    /// are kept in [`Self::bad_lines`] and left out. Errors only when the file cannot be read.
    pub fn open(path: impl AsRef<Path>, need_ground_truth: bool) -> Result<ManifestIndex> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut index = ManifestIndex { path: Arc::from(path), base, entries: Vec::new(), bad: Vec::new(), lines: 0 };
        // Ids by hash → the line that holds it; a hit is confirmed by reading that line again.
        let mut ids: HashMap<u64, u32> = HashMap::new();
        let (mut offset, mut number) = (0u64, 0usize);
        let mut buf = Vec::new();
        loop {
            let (taken, too_long) = next_line(&mut reader, &mut buf).map_err(|e| Error::io(path, e))?;
            if taken == 0 {
                break;
            }
            number += 1;
            let start = offset;
            offset += taken as u64;
            let raw = trim_line_end(&buf);
            let text = std::str::from_utf8(raw);
            // Blank as `parse` sees it (Unicode white space).
            if !too_long && text.is_ok_and(|t| t.trim().is_empty()) {
                continue;
            }
            index.lines += 1;
            let bad = |error: String| BadLine { line: number, error };
            if too_long {
                index.bad.push(bad(format!("the line has more than {MAX_LINE_BYTES} bytes")));
                continue;
            }
            let Ok(text) = text else {
                index.bad.push(bad("the line is not UTF-8 text".into()));
                continue;
            };
            let item = match parse_line(text, number, &index.base) {
                Ok(item) => item,
                Err(e) => {
                    index.bad.push(bad(e.to_string()));
                    continue;
                }
            };
            if need_ground_truth && item.ground_truth.is_none() {
                index.bad.push(bad("no ground truth: give mask, mask_rle or mask_polygons".into()));
                continue;
            }
            let id_hash = fnv1a(item.id.as_bytes(), FNV_OFFSET);
            if let Some(&earlier) = ids.get(&id_hash) {
                let same = index.entries.iter().find(|e| e.line == earlier).map(|&e| index.read_entry(e));
                if matches!(same, Some(Ok(ref other)) if other.id == item.id) {
                    index.bad.push(bad(format!("id {:?} is used by an earlier line", item.id)));
                    continue;
                }
            }
            ids.insert(id_hash, number as u32);
            let photo = photo_key(item.image.strip_prefix(&index.base).unwrap_or(&item.image));
            index.entries.push(Entry {
                offset: start,
                len: raw.len() as u32,
                line: number as u32,
                sentences: item.sentences.len() as u32,
                photo,
            });
        }
        Ok(index)
    }

    /// The manifest file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Good lines (refs).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Non-blank lines, good and bad.
    pub fn lines(&self) -> usize {
        self.lines
    }

    /// The lines left out, with their numbers and why.
    pub fn bad_lines(&self) -> &[BadLine] {
        &self.bad
    }

    /// 1-based line number of good line `i`.
    pub fn line_number(&self, i: usize) -> usize {
        self.entries[i].line as usize
    }

    /// Sentences of good line `i`.
    pub fn sentence_count(&self, i: usize) -> usize {
        self.entries[i].sentences as usize
    }

    /// [`photo_key`] of good line `i`'s photo.
    pub fn photo_key(&self, i: usize) -> u64 {
        self.entries[i].photo
    }

    /// Good line `i`, read and parsed again. Errors name the manifest and the line, and say
    /// so when the file changed since it was opened.
    pub fn item(&self, i: usize) -> Result<ManifestItem> {
        self.read_entry(self.entries[i])
    }

    /// The good lines for which `keep(i)` holds, in order; bad lines stay with `self`.
    pub fn subset(&self, mut keep: impl FnMut(usize) -> bool) -> ManifestIndex {
        let entries = self.entries.iter().enumerate().filter(|&(i, _)| keep(i)).map(|(_, &e)| e).collect();
        ManifestIndex { entries, bad: Vec::new(), ..self.clone_empty() }
    }

    /// Keeps the first `n` good lines.
    pub fn truncate(&mut self, n: usize) {
        self.entries.truncate(n);
    }

    fn clone_empty(&self) -> ManifestIndex {
        ManifestIndex {
            path: Arc::clone(&self.path),
            base: self.base.clone(),
            entries: Vec::new(),
            bad: Vec::new(),
            lines: self.lines,
        }
    }

    fn read_entry(&self, e: Entry) -> Result<ManifestItem> {
        let path = &*self.path;
        let at = |what: String| Error::invalid(path, format!("line {}: {what}", e.line));
        let mut bytes = vec![0u8; e.len as usize];
        let mut file = File::open(path).map_err(|err| Error::io(path, err))?;
        file.seek(SeekFrom::Start(e.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|err| at(format!("cannot read it again ({err}): the manifest changed since it was opened")))?;
        let changed = || at("the manifest changed since it was opened".into());
        let text = std::str::from_utf8(&bytes).map_err(|_| changed())?;
        // The line parsed when the index was made: failing now means the file changed.
        let item = parse_line(text, e.line as usize, &self.base)
            .map_err(|err| at(format!("the manifest changed since it was opened ({err})")))?;
        let photo = photo_key(item.image.strip_prefix(&self.base).unwrap_or(&item.image));
        if item.sentences.len() != e.sentences as usize || photo != e.photo {
            return Err(changed());
        }
        Ok(item)
    }
}

/// Reads up to and including the next `\n` into `buf` (at most `MAX_LINE_BYTES` + 2 bytes
/// kept; a longer line is consumed to its end). Returns the bytes consumed and whether the
/// line was too long.
fn next_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<(usize, bool)> {
    buf.clear();
    let limit = (MAX_LINE_BYTES + 2) as u64;
    let taken = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if buf.last() == Some(&b'\n') || (taken as u64) < limit {
        return Ok((taken, false));
    }
    let mut extra = 0;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok((taken + extra, true));
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(p) => (p + 1, true),
            None => (available.len(), false),
        };
        reader.consume(used);
        extra += used;
        if done {
            return Ok((taken + extra, true));
        }
    }
}

/// The line without its `\n` or `\r\n`.
fn trim_line_end(buf: &[u8]) -> &[u8] {
    let buf = buf.strip_suffix(b"\n").unwrap_or(buf);
    buf.strip_suffix(b"\r").unwrap_or(buf)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: a hash defined here, so that splits made from it do not change with
/// the Rust version.
pub(crate) fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    bytes.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Identifies a photo by its path relative to the manifest's folder (as written in the
/// manifest: `a//b.jpg` and `./a/./b.jpg` are `a/b.jpg`, but `x/../a.jpg` stays itself), so
/// that the key does not depend on where the manifest lies: the key of the split by photo.
pub fn photo_key(image: &Path) -> u64 {
    let normal: Vec<String> = image
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    fnv1a(normal.join("/").as_bytes(), FNV_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_keys_ignore_spelling_but_not_folders() {
        let key = |p: &str| photo_key(Path::new(p));
        assert_eq!(key("a/b.jpg"), key("a//b.jpg"));
        assert_eq!(key("a/b.jpg"), key("./a/./b.jpg"));
        assert_ne!(key("a/b.jpg"), key("b.jpg"));
        // Pinned: a split by photo must not move between versions.
        assert_eq!(key("a.jpg"), fnv1a(b"a.jpg", FNV_OFFSET));
        assert_eq!(fnv1a(b"a", FNV_OFFSET), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn over_long_lines_are_skipped_to_their_end() {
        let mut text = vec![b'x'; MAX_LINE_BYTES + 10];
        text.extend_from_slice(b"\nnext\n");
        let mut reader = BufReader::with_capacity(64, &text[..]);
        let mut buf = Vec::new();
        assert_eq!(next_line(&mut reader, &mut buf).unwrap(), (MAX_LINE_BYTES + 11, true));
        assert_eq!(next_line(&mut reader, &mut buf).unwrap(), (5, false));
        assert_eq!(buf, b"next\n");
        assert_eq!(next_line(&mut reader, &mut buf).unwrap(), (0, false));
    }
}
