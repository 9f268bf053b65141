//! The `detris segment --manifest` JSON Lines parser on any text. Checks that every
//! non-blank line ends up exactly once, good or bad, with its own line number, that good
//! lines keep the invariants the batch runner relies on (sentences non-empty, ids unique
//! and usable as folder names, RLE ground truths covering their frame), and that parsing a
//! good line on its own gives the same item.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use detris_io::manifest::{self, GroundTruth};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
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
        let raw = lines[item.line - 1];
        let again = manifest::parse_line(raw.strip_suffix('\r').unwrap_or(raw), item.line, base);
        assert_eq!(again.as_ref().ok(), Some(item), "a line parses the same on its own");
    }
});
