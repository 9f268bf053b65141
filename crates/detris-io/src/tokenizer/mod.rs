//! The CLIP tokenizer exactly as DETRIS uses it (CLIP's `SimpleTokenizer`):
//! clean-up (`ftfy.fix_text`, `html.unescape` twice, whitespace, lower case),
//! CLIP's word regex, byte-level BPE with the official merges,
//! then `[SOT] + ids + [EOT]`, cut to the word length with EOT last, and
//! padded with 0.
//!
//! Work is bounded: texts over [`MAX_TEXT_BYTES`] are refused.

mod clean;
mod ftfy;
mod ftfy_encoding;
mod ftfy_tables;
mod html_unescape;
mod words;

use crate::error::{Error, Result};

/// Id of `<|startoftext|>`.
pub const SOT: i64 = words::SOT_ID as i64;
/// Id of `<|endoftext|>`, the largest id (so `argmax` finds it).
pub const EOT: i64 = words::EOT_ID as i64;
/// Number of ids in the vocabulary.
pub const VOCAB_SIZE: usize = 49_408;

/// Longest text accepted, in UTF-8 bytes. Referring expressions are at most
/// a few hundred bytes; the cap bounds the work on hostile input, where the
/// BPE of one long word is quadratic in its length (times in
/// docs/bench/README.md).
pub const MAX_TEXT_BYTES: usize = 4 * 1024;

/// Refuses a sentence that names nothing (empty or only white space) before it
/// reaches the tokenizer.
pub fn check_sentence(s: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::input("empty sentence: say which object to segment, e.g. \"the cup on the left\""));
    }
    Ok(())
}

/// A sentence as the model takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// `word_len` ids: SOT, BPE ids, EOT, then 0 padding.
    pub ids: Vec<i64>,
    /// True when the sentence did not fit and was cut (last id forced to EOT).
    pub truncated: bool,
    /// Ids from SOT to EOT before cutting.
    pub n_ids: usize,
}

/// CLIP's `SimpleTokenizer`. Copies share one vocabulary, loaded on first use.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipTokenizer {
    _private: (),
}

impl ClipTokenizer {
    /// A handle on the shared tokenizer (the vocabulary is parsed once per process).
    pub fn new() -> Self {
        words::bpe();
        ClipTokenizer { _private: () }
    }

    /// The process-wide tokenizer.
    pub fn global() -> &'static ClipTokenizer {
        static GLOBAL: std::sync::OnceLock<ClipTokenizer> = std::sync::OnceLock::new();
        GLOBAL.get_or_init(ClipTokenizer::new)
    }

    /// `SimpleTokenizer.encode(text)`: the BPE ids without SOT/EOT.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        check_length(text)?;
        let mut ids = Vec::new();
        words::encode_clean(&clean::clean(text), &mut ids);
        Ok(ids)
    }

    /// DETRIS's `tokenize(text, word_len, truncate=True)`:
    /// `[SOT] + encode(text) + [EOT]`; if longer than `word_len`, the first
    /// `word_len - 1` ids and EOT; right-padded with 0. `word_len` must be ≥ 2.
    pub fn tokenize(&self, text: &str, word_len: usize) -> Result<Tokens> {
        if word_len < 2 {
            return Err(Error::input(format!("tokenizer: word length {word_len} is below 2 (SOT and EOT)")));
        }
        let bpe = self.encode(text)?;
        let mut ids = Vec::with_capacity(word_len.max(bpe.len() + 2));
        ids.push(SOT);
        ids.extend(bpe.iter().map(|&id| i64::from(id)));
        ids.push(EOT);
        let n_ids = ids.len();
        let truncated = n_ids > word_len;
        if truncated {
            ids.truncate(word_len - 1);
            ids.push(EOT);
        }
        ids.resize(word_len, 0);
        Ok(Tokens { ids, truncated, n_ids })
    }

    /// `SimpleTokenizer.decode(ids)`: the text the ids spell (`</w>` as a
    /// space, markers as `<|startoftext|>` / `<|endoftext|>`; padding 0 is `!`).
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Option<Vec<u32>> = ids.iter().map(|&id| u32::try_from(id).ok()).collect();
        ids.as_deref()
            .and_then(words::decode)
            .ok_or_else(|| Error::input(format!("tokenizer: id outside the vocabulary of {VOCAB_SIZE} in decode")))
    }
}

fn check_length(text: &str) -> Result<()> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(Error::input(format!(
            "tokenizer: text of {} bytes is longer than the limit of {MAX_TEXT_BYTES} bytes",
            text.len()
        )));
    }
    Ok(())
}

/// The decoder's key padding mask: true where `ids == 0` (padding).
///
/// As in DETRIS (`pad_mask = word == 0`), this also hides id 0 where it is
/// a real token: 0 is the BPE token `!`, so a `!` that ends a word (e.g.
/// "cat!") is masked too. Kept on purpose: trained checkpoints expect it.
pub fn pad_mask(ids: &[i64]) -> Vec<bool> {
    ids.iter().map(|&id| id == 0).collect()
}

/// Where the sentence feature is read: `torch.argmax(ids)`, the first
/// position of the largest id (EOT, the largest id, wherever present).
/// An empty slice gives 0.
pub fn eot_position(ids: &[i64]) -> usize {
    let mut best = 0;
    for (i, &id) in ids.iter().enumerate() {
        if ids.get(best).is_some_and(|&b| id > b) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad_mask_and_eot_position() {
        let ids = [SOT, 2368, 0, EOT, 0, 0];
        assert_eq!(pad_mask(&ids), [false, false, true, false, true, true]);
        assert_eq!(eot_position(&ids), 3);
        assert_eq!(eot_position(&[EOT, EOT]), 0);
        assert_eq!(eot_position(&[]), 0);
    }

    #[test]
    fn word_length_and_size_limits_are_errors() {
        let tok = ClipTokenizer::global();
        let short = tok.tokenize("cat", 1).unwrap_err().to_string();
        assert!(short.contains("word length 1"), "{short}");
        let long = "a".repeat(MAX_TEXT_BYTES + 1);
        let err = tok.encode(&long).unwrap_err().to_string();
        assert!(err.contains(&MAX_TEXT_BYTES.to_string()), "{err}");
        assert!(tok.encode(&"a ".repeat(MAX_TEXT_BYTES / 2)).is_ok());
    }

    #[test]
    fn word_len_two_keeps_only_markers() {
        let t = ClipTokenizer::global().tokenize("a red car", 2).unwrap();
        assert_eq!(t.ids, [SOT, EOT]);
        assert!(t.truncated);
        assert_eq!(t.n_ids, 5);
    }

    #[test]
    fn markers_and_ignorecase_quirks() {
        let tok = ClipTokenizer::global();
        // Printed by CLIP's SimpleTokenizer.encode.
        assert_eq!(tok.encode("<|startoftext|>Hi<|endoftext|>").unwrap(), [49406, 1883, 49407]);
        assert_eq!(tok.encode("it'ſ").unwrap(), [585, 6, 129, 379]);
        assert_eq!(tok.encode("<|ſtartoftext|>").unwrap(), [27, 91, 129, 123, 2002, 6659, 18169, 91, 285]);
        assert_eq!(tok.encode("a\u{345}b").unwrap(), [320, 321]);
    }

    #[test]
    fn decode_spells_the_text() {
        let tok = ClipTokenizer::global();
        let t = tok.tokenize("The guy's hat!", 8).unwrap();
        assert_eq!(tok.decode(&t.ids[..t.n_ids]).unwrap(), "<|startoftext|>the guy 's hat ! <|endoftext|>");
        assert!(tok.decode(&[49408]).is_err());
        assert!(tok.decode(&[-1]).is_err());
    }
}
