//! The tokenizer against the official `SimpleTokenizer`'s output
//! (`aux/tokenizer.json`, `aux/tokenizer_cases.json`) and four sentences
//! tokenized by the official repository's tokenizer.

use detris_io::fixtures;
use detris_io::tokenizer::{eot_position, pad_mask, ClipTokenizer, EOT, SOT};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = fixtures::path(&format!("aux/{name}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn rows(doc: &Value) -> &[Value] {
    doc["rows"].as_array().expect("rows")
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().expect("id list").iter().map(|x| x.as_i64().expect("id")).collect()
}

/// Row keys holding padded ids and their word length: "word_len17", "ctx77", ...
fn word_len_keys(row: &Value) -> Vec<(String, usize)> {
    let obj = row.as_object().expect("row object");
    obj.keys()
        .filter(|k| *k != "text" && *k != "encode")
        .map(|k| {
            let digits: String = k.chars().filter(char::is_ascii_digit).collect();
            (k.clone(), digits.parse().unwrap_or_else(|_| panic!("no word length in key {k}")))
        })
        .collect()
}

/// Checks every padded id list of every row; returns (word length, passed, total) per length.
fn check_padded(doc: &Value, tok: &ClipTokenizer) -> Vec<(usize, usize, usize)> {
    let mut tally: Vec<(usize, usize, usize)> = Vec::new();
    let mut failures = Vec::new();
    for row in rows(doc) {
        let text = row["text"].as_str().expect("text");
        for (key, len) in word_len_keys(row) {
            let want = ints(&row[&key]);
            assert_eq!(want.len(), len, "{key} of {text:?} has the wrong length");
            let got = tok.tokenize(text, len).expect("tokenize");
            let pos = match tally.iter().position(|t| t.0 == len) {
                Some(p) => p,
                None => {
                    tally.push((len, 0, 0));
                    tally.len() - 1
                }
            };
            tally[pos].2 += 1;
            if got.ids == want {
                tally[pos].1 += 1;
            } else {
                failures.push(format!("{text:?} L={len}: got {:?}, want {want:?}", got.ids));
            }
            // Truncation bookkeeping agrees with the ids.
            assert_eq!(got.truncated, got.n_ids > len, "{text:?}");
            let eot_at = eot_position(&got.ids);
            assert_eq!(got.ids[eot_at], EOT, "{text:?}");
            assert_eq!(eot_at, got.n_ids.min(len) - 1, "{text:?}");
        }
    }
    tally.sort();
    eprintln!("per word length (L, passed, total): {tally:?}");
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
    tally
}

#[test]
fn reproduces_tokenizer_json() {
    let doc = load("tokenizer.json");
    let tok = ClipTokenizer::new();
    assert_eq!(doc["sot"].as_i64(), Some(SOT));
    assert_eq!(doc["eot"].as_i64(), Some(EOT));
    let mut encoded = 0;
    for row in rows(&doc) {
        let text = row["text"].as_str().expect("text");
        let want: Vec<u32> = ints(&row["encode"]).into_iter().map(|x| u32::try_from(x).expect("id")).collect();
        assert_eq!(tok.encode(text).expect("encode"), want, "encode({text:?})");
        encoded += 1;
    }
    eprintln!("tokenizer.json: encode {encoded}/{encoded}");
    let tally = check_padded(&doc, &tok);
    assert!(encoded > 0 && !tally.is_empty());
}

#[test]
fn reproduces_tokenizer_cases_json() {
    let doc = load("tokenizer_cases.json");
    assert_eq!(doc["sot"].as_i64(), Some(SOT));
    assert_eq!(doc["eot"].as_i64(), Some(EOT));
    assert_eq!(doc["pad"].as_i64(), Some(0));
    let tally = check_padded(&doc, ClipTokenizer::global());
    // Every word length the file names was checked on every row.
    let n_rows = rows(&doc).len();
    assert!(tally.iter().all(|&(_, _, total)| total == n_rows), "{tally:?}");
}

#[test]
fn official_tokenizer_vectors() {
    let tok = ClipTokenizer::global();
    let cases: [(&str, &[i64]); 4] = [
        ("left piece slice", &[49406, 1823, 2754, 13431, 49407]),
        ("man in red shirt on the right", &[49406, 786, 530, 736, 2523, 525, 518, 1155, 49407]),
        ("the guy's hat", &[49406, 518, 2149, 568, 3801, 49407]),
        (
            "A very long referring expression describing the second zebra from the left standing behind the tree near the fence",
            &[49406, 320, 1070, 1538, 29797, 11357, 24239, 518, 2241, 22548, 633, 518, 1823, 2862, 2403, 518, 49407],
        ),
    ];
    for (text, head) in cases {
        let t = tok.tokenize(text, 17).expect("tokenize");
        assert_eq!(&t.ids[..head.len()], head, "{text:?}");
        assert!(t.ids[head.len()..].iter().all(|&id| id == 0), "{text:?}");
        assert_eq!(pad_mask(&t.ids).iter().filter(|&&m| m).count(), 17 - head.len());
    }
    let long = tok.tokenize(cases[3].0, 17).expect("tokenize");
    assert!(long.truncated && long.n_ids > 17);
}

#[test]
fn empty_text_is_sot_eot() {
    let t = ClipTokenizer::global().tokenize("", 5).expect("tokenize");
    assert_eq!(t.ids, [SOT, EOT, 0, 0, 0]);
    assert_eq!((t.truncated, t.n_ids), (false, 2));
}
