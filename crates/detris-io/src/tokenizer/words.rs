//! The official word split and BPE: CLIP's regex (compiled with IGNORECASE,
//! applied to lower-cased text) and the merges of `bpe_simple_vocab_16e6`,
//! which `instant-clip-tokenizer` embeds and applies exactly as CLIP's
//! `bpe()` does (lowest-rank pair first, all its occurrences left to right).

use std::sync::OnceLock;

use instant_clip_tokenizer::{Token, Tokenizer};
use regex::Regex;

/// `<|startoftext|>`, the first id of every sequence.
pub(super) const SOT_ID: u32 = 49406;
/// `<|endoftext|>`, the last id of every sequence.
pub(super) const EOT_ID: u32 = 49407;

/// CLIP's pattern with IGNORECASE spelled out as Python's `regex` applies it
/// to lower-case text: `s` also matches `ſ` (U+017F), and U+0345 (whose case
/// fold is a letter) is left out of the punctuation class, so it matches
/// nothing and is dropped, as in Python. The `regex` crate's `(?i)` differs on
/// that second point, hence no `(?i)`.
const WORD_PATTERN: &str = concat!(
    r"<\|[sSſ][tT][aA][rR][tT][oO][fF][tT][eE][xX][tT]\|>",
    r"|<\|[eE][nN][dD][oO][fF][tT][eE][xX][tT]\|>",
    r"|'[sSſ]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]",
    r"|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+",
);

/// Words whose BPE `instant-clip-tokenizer` cannot produce because its own
/// split (no IGNORECASE, `<start_of_text>` markers) would cut them; their
/// official BPE ids, printed by CLIP's `SimpleTokenizer.bpe`.
const SPLIT_BY_INSTANT: &[(&str, &[u32])] =
    &[("'ſ", &[6, 129, 379]), ("<|ſtartoftext|>", &[27, 91, 129, 123, 2002, 6659, 18169, 91, 285])];

fn word_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(WORD_PATTERN).expect("static regex"))
}

/// The BPE vocabulary, loaded once (parsing the merges takes a while).
pub(super) fn bpe() -> &'static Tokenizer {
    static BPE: OnceLock<Tokenizer> = OnceLock::new();
    BPE.get_or_init(Tokenizer::new)
}

/// `SimpleTokenizer.encode` after cleaning: split `text` into words and
/// append each word's BPE ids to `out`.
pub(super) fn encode_clean(text: &str, out: &mut Vec<u32>) {
    let bpe = bpe();
    let mut tokens: Vec<Token> = Vec::new();
    for word in word_re().find_iter(text).map(|m| m.as_str()) {
        match word {
            // CLIP's BPE cache maps the two markers to themselves.
            "<|startoftext|>" => out.push(SOT_ID),
            "<|endoftext|>" => out.push(EOT_ID),
            _ => {
                if let Some((_, ids)) = SPLIT_BY_INSTANT.iter().find(|(w, _)| *w == word) {
                    out.extend_from_slice(ids);
                    continue;
                }
                // Every other word is one match of instant's pattern too, so
                // this is exactly CLIP's bpe(word).
                tokens.clear();
                bpe.encode(word, &mut tokens);
                out.extend(tokens.iter().map(|t| u32::from(t.to_u16())));
            }
        }
    }
}

/// `SimpleTokenizer.decode`: byte-level BPE back to text, `</w>` as a space,
/// invalid UTF-8 replaced by U+FFFD. `None` if an id is outside the vocabulary.
pub(super) fn decode(ids: &[u32]) -> Option<String> {
    let bpe = bpe();
    let mut text = String::new();
    let mut run: Vec<Token> = Vec::new();
    let flush = |run: &mut Vec<Token>, text: &mut String| {
        if !run.is_empty() {
            text.push_str(&bpe.decode(run.drain(..)));
        }
    };
    for &id in ids {
        let marker = match id {
            SOT_ID => Some("<|startoftext|>"),
            EOT_ID => Some("<|endoftext|>"),
            _ => None,
        };
        match marker {
            Some(m) => {
                flush(&mut run, &mut text);
                text.push_str(m);
            }
            None => run.push(Token::from_u16(u16::try_from(id).ok()?, bpe)?),
        }
    }
    flush(&mut run, &mut text);
    Some(text)
}
