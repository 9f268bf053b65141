//! The manifest JSON Lines parser on any text. Checks that every non-blank line ends up
//! exactly once, good or bad, with its own line number, that good lines keep the invariants
//! the batch runner and the loader rely on (sentences non-empty, ids unique and usable as
//! folder names, RLE ground truths covering their frame, polygons rasterising to their
//! frame or failing cleanly), that parsing a good line on its own gives the same item, and
//! that the streaming index of the same bytes as a file (the training reader) gives the
//! same items and bad lines, reading each line again from its offset.
#![no_main]

#[path = "common.rs"]
mod common;

use std::collections::HashSet;
use std::path::Path;

use detris_io::manifest::{self, GroundTruth, ManifestIndex, MAX_LINE_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::write("manifest.jsonl", data);
    let index = ManifestIndex::open(&path, false).expect("a written file can be read");
    for i in 0..index.len() {
        let item = index.item(i).expect("an indexed line reads back");
        assert_eq!(item.line, index.line_number(i));
        assert_eq!(item.sentences.len(), index.sentence_count(i));
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    if text.split('\n').all(|l| l.len() <= MAX_LINE_BYTES) {
        let parsed = manifest::parse(text, path.parent().unwrap());
        assert_eq!(index.bad_lines(), &parsed.bad[..], "the index and the parser agree on bad lines");
        let items: Vec<_> = (0..index.len()).map(|i| index.item(i).unwrap()).collect();
        assert_eq!(items, parsed.items, "the index and the parser agree on items");
    }
    let base = Path::new("/base");
    let m = manifest::parse(text, base);
    let lines: Vec<&str> = text.split('\n').collect();
    let non_blank = lines.iter().filter(|l| !l.trim().is_empty()).count();
    assert_eq!(m.items.len() + m.bad.len(), non_blank, "every non-blank line is an item or a bad line");
    let mut numbers: Vec<usize> = m.items.iter().map(|i| i.line).chain(m.bad.iter().map(|b| b.line)).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), non_blank, "line numbers are distinct");
    let mut ids = HashSet::new();
    for item in &m.items {
        assert!(item.line >= 1 && item.line <= lines.len());
        assert!(ids.insert(item.id.clone()), "ids are unique");
        assert!(!item.id.is_empty() && !item.id.contains('/') && !item.id.starts_with('.'));
        assert!(!item.sentences.is_empty() && item.sentences.iter().all(|s| !s.trim().is_empty()));
        assert!(item.image.starts_with(base) || item.image.is_absolute());
        if let Some(GroundTruth::Rle(rle)) = &item.ground_truth {
            let total: u64 = rle.counts().iter().map(|&c| u64::from(c)).sum();
            assert_eq!(total, (rle.height() * rle.width()) as u64, "runs cover the frame");
        }
        if let Some(truth @ GroundTruth::Polygons(polygons)) = &item.ground_truth {
            assert!(polygons.iter().all(|p| p.len() >= 6 && p.len() % 2 == 0 && p.iter().all(|v| v.is_finite())));
            if let Ok(mask) = truth.read(7, 5) {
                assert_eq!((mask.grey.len(), mask.width, mask.height), (35, 7, 5));
                assert!(mask.grey.iter().all(|&v| v == 0 || v == 255));
            }
        }
        let raw = lines[item.line - 1];
        let again = manifest::parse_line(raw.strip_suffix('\r').unwrap_or(raw), item.line, base);
        assert_eq!(again.as_ref().ok(), Some(item), "a line parses the same on its own");
    }
});
