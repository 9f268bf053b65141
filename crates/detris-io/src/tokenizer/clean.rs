//! CLIP's text clean-up before the word split: `basic_clean`
//! (`ftfy.fix_text`, `html.unescape` twice, `strip`), `whitespace_clean`
//! (runs of `\s` to one space, `strip`) and `lower()`.

use std::sync::OnceLock;

use regex::Regex;

use super::{ftfy, html_unescape};

/// `whitespace_clean(basic_clean(text)).lower()`.
pub(super) fn clean(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let once = html_unescape::unescape(&fixed);
    let twice = html_unescape::unescape(&once);
    let basic = twice.trim_matches(is_python_space);
    // Python `regex`'s `\s` is Unicode White_Space, as is the `regex` crate's.
    static SPACES: OnceLock<Regex> = OnceLock::new();
    let spaces = SPACES.get_or_init(|| Regex::new(r"\s+").expect("static regex"));
    let collapsed = spaces.replace_all(basic, " ");
    collapsed.trim_matches(is_python_space).to_lowercase()
}

/// `str.isspace()`, what Python's argument-less `strip()` removes: Unicode
/// White_Space plus the separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}
