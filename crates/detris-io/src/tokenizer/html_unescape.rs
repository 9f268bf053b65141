//! Python's `html.unescape`, rule for rule: numeric references with and
//! without `;`, the HTML5 fix-ups of invalid code points, and named
//! references without `;` resolved by the longest known prefix
//! (`&notit;` → `¬it;`, `&ampx` → `&x`), as CLIP's `basic_clean` applies it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};

use super::ftfy_encoding::sloppy_windows_1252;
use super::ftfy_tables::HTML5;

/// `html.entities.html5`, keyed by name (with its `;` where it has one).
pub(super) fn html5() -> &'static HashMap<&'static str, &'static str> {
    static MAP: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    MAP.get_or_init(|| HTML5.iter().copied().collect())
}

fn charref_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    // Python's `html._charref`, verbatim.
    RE.get_or_init(|| Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)").expect("static regex"))
}

/// `html.unescape(s)`.
pub(super) fn unescape(s: &str) -> Cow<'_, str> {
    if !s.contains('&') {
        return Cow::Borrowed(s);
    }
    charref_re().replace_all(s, |caps: &Captures| match caps.get(1) {
        Some(m) => replace_charref(m.as_str()),
        None => String::new(),
    })
}

fn replace_charref(s: &str) -> String {
    match s.strip_prefix('#') {
        Some(num) => numeric(num),
        None => named(s),
    }
}

fn numeric(num: &str) -> String {
    let (digits, radix) = match num.strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (num, 10),
    };
    let digits = digits.trim_end_matches(';');
    // Only digits reach here, so a failed parse means "too large", which
    // Python's unbounded int turns into U+FFFD below.
    let code = u64::from_str_radix(digits, radix).unwrap_or(u64::MAX);
    if code == 0 {
        return "\u{fffd}".into();
    }
    if code == 0x0d {
        return "\r".into();
    }
    if (0x80..=0x9f).contains(&code) {
        // `_invalid_charrefs` is Windows-1252 with its holes kept as C1.
        return sloppy_windows_1252(code as u8).to_string();
    }
    if (0xD800..=0xDFFF).contains(&code) || code > 0x10FFFF {
        return "\u{fffd}".into();
    }
    if is_invalid_codepoint(code) {
        return String::new();
    }
    char::from_u32(code as u32).map(String::from).unwrap_or_else(|| "\u{fffd}".into())
}

/// `html._invalid_codepoints`.
fn is_invalid_codepoint(code: u64) -> bool {
    matches!(code, 0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f..=0x9f | 0xfdd0..=0xfdef)
        || (code & 0xfffe == 0xfffe && code <= 0x10ffff)
}

fn named(s: &str) -> String {
    let table = html5();
    if let Some(text) = table.get(s) {
        return (*text).to_string();
    }
    // Longest prefix of at least two characters that is a known name
    // (Python: `for x in range(len(s)-1, 1, -1)`, counted in code points).
    let bounds: Vec<usize> = s.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in bounds.iter().rev() {
        if let (Some(head), Some(tail)) = (s.get(..end), s.get(end..)) {
            if let Some(text) = table.get(head) {
                return format!("{text}{tail}");
            }
        }
    }
    format!("&{s}")
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn follows_python_html_unescape() {
        // Expected values printed by Python 3.11's html.unescape.
        let cases = [
            ("kid &amp; mom", "kid & mom"),
            ("&amp;amp;", "&amp;"),
            ("&notit; &notin;", "¬it; ∉"),
            ("&ampx &amp &AMP;", "&x & &"),
            ("&#65;&#x42;&#X43&#67", "ABCC"),
            (
                "&#0; &#13; &#128; &#129; &#1; &#xD800; &#1114112; &#99999999999999999999999;",
                "\u{fffd} \r € \u{81}  \u{fffd} \u{fffd} \u{fffd}",
            ),
            ("&#xfffe;&#xFDD0;x", "x"),
            ("&unknown; & &; &#; &#x;", "&unknown; & &; &#; &#x;"),
            ("&quot;quoted&quot;", "\"quoted\""),
            ("&eacute&Eacute;", "éÉ"),
        ];
        for (input, want) in cases {
            assert_eq!(unescape(input), want, "{input:?}");
        }
    }
}
