//! ftfy 6.3.1's `fix_encoding`: detect mojibake (UTF-8 read as a single-byte
//! encoding) with ftfy's badness heuristic and undo it, including its
//! sub-steps `restore_byte_a0`, `replace_lossy_sequences`,
//! `decode_inconsistent_utf8`, `fix_c1_controls` and the `utf-8-variants`
//! decoder (CESU-8 surrogate pairs, Java's `C0 80` null). Every table and
//! regex comes from ftfy itself through `gen_ftfy_tables.py`.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::ftfy_tables::{BADNESS, CHARMAPS, UTF8_CONTINUATION_STRICT, UTF8_DETECTOR};

/// Bound on ftfy's "repeat until nothing changes" loops (here and in `ftfy`).
pub(super) const MAX_FIXPOINT_ROUNDS: usize = 64;

/// One of ftfy's single-byte encodings: what each byte decodes to, and back.
struct Charmap {
    name: &'static str,
    decode: Vec<char>,
    encode: HashMap<char, u8>,
}

impl Charmap {
    fn new(name: &'static str, table: &'static str) -> Self {
        let decode: Vec<char> = table.chars().collect();
        let encode = decode.iter().enumerate().filter_map(|(b, &c)| Some((c, u8::try_from(b).ok()?))).collect();
        Charmap { name, decode, encode }
    }

    /// `chardata.possible_encoding`: `^[\x00-\x19\x1b-\x7f{bytes 80..FF and 1A decoded}]*$`.
    fn possible(&self, text: &str) -> bool {
        text.chars().all(|c| {
            (c <= '\u{7f}' && c != '\u{1a}')
                || self.decode.get(0x1a) == Some(&c)
                || self.decode.get(0x80..).is_some_and(|high| high.contains(&c))
        })
    }

    /// `text.encode(name)`; `None` where a character has no byte (not reached
    /// after `possible`).
    fn encode(&self, text: &str) -> Option<Vec<u8>> {
        text.chars().map(|c| self.encode.get(&c).copied()).collect()
    }
}

fn charmaps() -> &'static [Charmap] {
    static MAPS: OnceLock<Vec<Charmap>> = OnceLock::new();
    MAPS.get_or_init(|| CHARMAPS.iter().map(|&(name, table)| Charmap::new(name, table)).collect())
}

/// What byte `b` means in ftfy's `sloppy-windows-1252` (Windows-1252 with
/// its five holes decoded as the C1 control of the same number).
pub(super) fn sloppy_windows_1252(b: u8) -> char {
    charmaps()
        .iter()
        .find(|m| m.name == "sloppy-windows-1252")
        .and_then(|m| m.decode.get(usize::from(b)).copied())
        .unwrap_or(char::from(b))
}

fn regex(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("generated regex compiles"))
}

fn bytes_regex(cell: &'static OnceLock<BytesRegex>, pattern: &str) -> &'static BytesRegex {
    cell.get_or_init(|| BytesRegex::new(pattern).expect("static regex compiles"))
}

/// `badness.is_bad`.
pub(super) fn is_bad(text: &str) -> bool {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, BADNESS).is_match(text)
}

/// `fix_encoding`: repeat one step of fixing until nothing changes.
pub(super) fn fix_encoding(text: &str) -> String {
    let mut text = text.to_string();
    // Each step either returns its input or decodes it into something
    // different; the cap only guards against a cycle ftfy would loop on.
    for _ in 0..MAX_FIXPOINT_ROUNDS {
        let next = fix_encoding_one_step(&text);
        if next == text {
            break;
        }
        text = next;
    }
    text
}

/// `_fix_encoding_one_step_and_explain`, without the explanation.
fn fix_encoding_one_step(text: &str) -> String {
    if text.is_empty() || text.is_ascii() || !is_bad(text) {
        return text.to_string();
    }
    let mut latin1_possible = false;
    for map in charmaps() {
        if !map.possible(text) {
            continue;
        }
        latin1_possible |= map.name == "latin-1";
        let Some(mut bytes) = map.encode(text) else { continue };
        if map.name != "macroman" && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if map.name.starts_with("sloppy") {
            bytes = replace_lossy_sequences(&bytes);
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if let Some(fixed) = decoded {
            return fixed;
        }
    }
    if utf8_detector_search(text, 0).is_some() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return fixed;
        }
    }
    // ftfy asks whether "windows-1252" (never in its list) was possible, so
    // Latin-1 text always gets a strict Windows-1252 re-decoding try.
    if latin1_possible {
        if let Some(fixed) = latin1_as_strict_windows_1252(text) {
            if fixed != text {
                return fixed;
            }
        }
    }
    if text.chars().any(is_c1) {
        return fix_c1_controls(text);
    }
    text.to_string()
}

fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

/// `fixes.fix_c1_controls`: C1 controls read as Windows-1252, like browsers.
pub(super) fn fix_c1_controls(text: &str) -> String {
    text.chars()
        .map(|c| match u8::try_from(u32::from(c)) {
            Ok(b) if is_c1(c) => sloppy_windows_1252(b),
            _ => c,
        })
        .collect()
}

/// `text.encode('latin-1').decode('windows-1252')`, `None` on the five
/// bytes strict Windows-1252 leaves undefined.
fn latin1_as_strict_windows_1252(text: &str) -> Option<String> {
    text.chars()
        .map(|c| {
            let b = u8::try_from(u32::from(c)).ok()?;
            match b {
                0x81 | 0x8D | 0x8F | 0x90 | 0x9D => None,
                // Only 80..9F differ from Latin-1 (the sloppy table's 1A → U+FFFD is ftfy's own).
                0x80..=0x9F => Some(sloppy_windows_1252(b)),
                _ => Some(char::from(b)),
            }
        })
        .collect()
}

fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    bytes_regex(
        &RE,
        r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
    )
}

fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    bytes_regex(
        &RE,
        r"(?-u)[\xc2-\xdf][\x1a]|[\xc2-\xc3][?]|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]|\x1a",
    )
}

/// `fixes.restore_byte_a0`: put back the `A0` bytes that became spaces.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" → b"\xc3\xa0 "
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let rest = bytes.get(i + 2..).unwrap_or_default();
        let grave_word = b == 0xC3
            && bytes.get(i + 1) == Some(&b' ')
            && ![&b" "[..], b"quele", b"quela", b"quilo", b"s "].iter().any(|w| rest.starts_with(w));
        if grave_word {
            out.extend_from_slice(b"\xc3\xa0 ");
            i += 2;
        } else {
            out.push(b);
            i += 1;
        }
    }
    altered_utf8_re()
        .replace_all(&out, |caps: &regex::bytes::Captures| {
            caps.get(0)
                .map(|m| m.as_bytes().iter().map(|&b| if b == b' ' { 0xA0 } else { b }).collect::<Vec<u8>>())
                .unwrap_or_default()
        })
        .into_owned()
}

/// `fixes.replace_lossy_sequences`: UTF-8 sequences with lost bytes → U+FFFD.
fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    lossy_utf8_re().replace_all(bytes, &b"\xef\xbf\xbd"[..]).into_owned()
}

/// ftfy's `utf-8-variants` decoder with strict errors: UTF-8, plus `C0 80`
/// as U+0000 and CESU-8 surrogate pairs as the astral character they encode.
/// `None` where Python raises `UnicodeDecodeError`.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let special = match bytes.get(i..) {
            Some([0xC0, 0x80, ..]) => Some(('\0', 2)),
            Some([0xED, b1 @ 0xA0..=0xAF, b2 @ 0x80..=0xBF, 0xED, b4 @ 0xB0..=0xBF, b5 @ 0x80..=0xBF, ..]) => {
                let code = ((u32::from(*b1) & 0x0F) << 16)
                    + ((u32::from(*b2) & 0x3F) << 10)
                    + ((u32::from(*b4) & 0x0F) << 6)
                    + (u32::from(*b5) & 0x3F)
                    + 0x10000;
                Some((char::from_u32(code)?, 6))
            }
            _ => None,
        };
        match special {
            Some((c, len)) => {
                out.push_str(std::str::from_utf8(bytes.get(start..i)?).ok()?);
                out.push(c);
                i += len;
                start = i;
            }
            None => i += 1,
        }
    }
    out.push_str(std::str::from_utf8(bytes.get(start..)?).ok()?);
    Some(out)
}

fn utf8_detector_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, UTF8_DETECTOR)
}

fn continuation_strict_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    regex(&RE, UTF8_CONTINUATION_STRICT)
}

/// `UTF8_DETECTOR_RE.search(text, pos)`, with its look-behind
/// `(?<! [utf8_continuation_strict])` checked here.
fn utf8_detector_search(text: &str, mut pos: usize) -> Option<(usize, usize)> {
    loop {
        let m = utf8_detector_re().find_at(text, pos)?;
        let prev = text.get(..m.start()).and_then(|head| head.chars().next_back());
        let blocked = prev.is_some_and(|c| continuation_strict_re().is_match(c.encode_utf8(&mut [0; 4])));
        if !blocked {
            return Some((m.start(), m.end()));
        }
        // Python retries one character later.
        let step = text.get(m.start()..).and_then(|t| t.chars().next()).map_or(1, char::len_utf8);
        pos = m.start() + step;
    }
}

/// `fixes.decode_inconsistent_utf8`: fix mojibake embedded in other text.
fn decode_inconsistent_utf8(text: &str) -> String {
    let total_chars = text.chars().count();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut pos = 0;
    while let Some((start, end)) = utf8_detector_search(text, pos) {
        let (Some(before), Some(found)) = (text.get(last..start), text.get(start..end)) else { break };
        out.push_str(before);
        if found.chars().count() < total_chars && is_bad(found) {
            out.push_str(&fix_encoding(found));
        } else {
            out.push_str(found);
        }
        last = end;
        pos = end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    out
}
