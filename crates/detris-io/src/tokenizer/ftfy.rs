//! A port of `ftfy.fix_text` (ftfy 6.3.1, default configuration), the first
//! step of CLIP's `basic_clean`.
//!
//! Covered, in ftfy's order and with its fix-point loop per line:
//! `unescape_html` (semicolon entities plus ftfy's all-caps ones, skipped
//! from the first line that holds a `<` on), `fix_encoding` (mojibake, see
//! `ftfy_encoding`), `fix_c1_controls`, `fix_latin_ligatures`,
//! `fix_character_width` (full-width ASCII, half-width kana, U+3000),
//! `uncurl_quotes`, `fix_line_breaks`, `remove_terminal_escapes`,
//! `remove_control_chars` and NFC normalisation.
//! Not needed in Rust: `fix_surrogates` (a `&str` holds no surrogates).
//! Known gaps: NFC and the character classes follow the Unicode versions of
//! the Rust crates rather than Python's `unicodedata`; a line that ftfy would
//! keep rewriting forever stops after `MAX_FIXPOINT_ROUNDS` rounds.

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};
use unicode_normalization::UnicodeNormalization;

use super::ftfy_encoding::{fix_c1_controls, fix_encoding, MAX_FIXPOINT_ROUNDS};
use super::ftfy_tables::{FTFY_UPPER_ENTITIES, HTML5, WIDTH_MAP};
use super::html_unescape;

/// ftfy's `max_decode_length`: a line longer than this is fixed in pieces.
const MAX_DECODE_CHARS: usize = 1_000_000;

/// `ftfy.fix_text(text)` with the default `TextFixerConfig`.
pub(super) fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in segments(text) {
        // ftfy turns "auto" off for this segment and every later one.
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

/// The pieces `fix_text` fixes one by one: lines with their `\n`, cut every
/// `MAX_DECODE_CHARS` characters.
fn segments(text: &str) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (i, c) in text.char_indices() {
        chars += 1;
        if c == '\n' || chars == MAX_DECODE_CHARS {
            let end = i + c.len_utf8();
            if let Some(piece) = text.get(start..end) {
                pieces.push(piece);
            }
            start = end;
            chars = 0;
        }
    }
    if let Some(rest) = text.get(start..).filter(|r| !r.is_empty()) {
        pieces.push(rest);
    }
    pieces
}

/// `fix_and_explain(segment)`: all fixers in order until a fix point.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_string();
    for _ in 0..MAX_FIXPOINT_ROUNDS {
        let before = text.clone();
        if unescape {
            text = unescape_html(&text);
        }
        text = fix_encoding(&text);
        text = fix_c1_controls(&text);
        text = fix_latin_ligatures(&text);
        text = fix_character_width(&text);
        text = text.chars().map(uncurl_quote).collect();
        text = fix_line_breaks(&text);
        text = terminal_escape_re().replace_all(&text, "").into_owned();
        text.retain(|c| !is_removed_control(c));
        text = text.nfc().collect();
        if text == before {
            break;
        }
    }
    text
}

/// ftfy's `HTML_ENTITIES`: `&name;` for every HTML5 name with a `;`, plus the
/// all-caps forms it accepts.
fn ftfy_entities() -> &'static HashMap<String, &'static str> {
    static MAP: OnceLock<HashMap<String, &'static str>> = OnceLock::new();
    MAP.get_or_init(|| {
        let semicolon =
            HTML5.iter().filter(|(name, _)| name.ends_with(';')).map(|(name, text)| (format!("&{name}"), *text));
        let upper = FTFY_UPPER_ENTITIES.iter().map(|(name, text)| ((*name).to_string(), *text));
        semicolon.chain(upper).collect()
    })
}

/// `fixes.unescape_html`: only entities ending in `;` (so "this&not that"
/// stays), numeric ones only if `html.unescape` consumes the `;`.
fn unescape_html(text: &str) -> String {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("static regex"));
    re.replace_all(text, |caps: &Captures| {
        let entity = caps.get(0).map_or("", |m| m.as_str());
        if let Some(found) = ftfy_entities().get(entity) {
            return (*found).to_string();
        }
        if entity.starts_with("&#") {
            let unescaped = html_unescape::unescape(entity);
            if !unescaped.contains(';') {
                return unescaped.into_owned();
            }
        }
        entity.to_string()
    })
    .into_owned()
}

/// `fixes.fix_latin_ligatures`.
fn fix_latin_ligatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let letters = match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.push_str(letters);
    }
    out
}

/// `fixes.fix_character_width` via ftfy's `WIDTH_MAP`.
fn fix_character_width(text: &str) -> String {
    static MAP: OnceLock<HashMap<char, &'static str>> = OnceLock::new();
    let map = MAP.get_or_init(|| WIDTH_MAP.iter().copied().collect());
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match map.get(&c) {
            Some(s) => out.push_str(s),
            None => out.push(c),
        }
    }
    out
}

/// `fixes.uncurl_quotes`.
fn uncurl_quote(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// `fixes.fix_line_breaks`.
fn fix_line_breaks(text: &str) -> String {
    text.replace("\r\n", "\n").replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n")
}

/// `fixes.ANSI_RE` (`\d` is any Unicode decimal digit, as in Python).
fn terminal_escape_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\x1b\[((?:\d|;)*)([a-zA-Z])").expect("static regex"))
}

/// `chardata.CONTROL_CHARS`, which `remove_control_chars` deletes.
fn is_removed_control(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}' | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}')
}

#[cfg(test)]
mod tests {
    use super::fix_text;

    #[test]
    fn follows_ftfy() {
        // Expected values printed by ftfy 6.3.1's fix_text.
        let cases = [
            ("ＦＵＬＬ ｗｉｄｔｈ　text", "FULL width text"),
            ("café", "café"),
            ("sÃ³", "só"),
            ("voilÃ le travail", "voilà le travail"),
            ("âœ” No problems", "✔ No problems"),
            ("&macr;\\_(ã\u{83}\u{84})_/&macr;", "¯\\_(ツ)_/¯"),
            ("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!", "Broken text… it's flubberific!"),
            ("P&EACUTE;REZ &ntilde; &nTILDE; this&not that", "PÉREZ ñ &nTILDE; this&not that"),
            ("a\r\nb\u{2028}c\u{85}d", "a\nb\nc…d"),
            ("\u{1b}[36;44mblue\u{1b}[0m\u{feff}\u{7}", "blue"),
            ("x < y &amp; z", "x < y &amp; z"),
            ("\u{1a}man3x-rayïÂ£shirt", "man3x-rayï£shirt"),
            ("Ð¿Ñ€Ð¸Ð²ÐµÑ‚ man", "привет man"),
            ("lâ€™Ã©tÃ© and â€œquotedâ€\u{fffd}", "l'été and \"quoted\u{fffd}"),
            ("cafÃ© â\u{80}\u{99}s", "café 's"),
        ];
        for (input, want) in cases {
            assert_eq!(fix_text(input), want, "{input:?}");
        }
    }
}
