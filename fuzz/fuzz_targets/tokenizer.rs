//! The CLIP tokenizer on arbitrary text (invalid UTF-8 replaced, as a server
//! would): always SOT ... EOT within the word length, ids in the vocabulary.
#![no_main]

use detris_io::tokenizer::{ClipTokenizer, EOT, MAX_TEXT_BYTES, SOT, VOCAB_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let tok = ClipTokenizer::global();
    for word_len in [17, 77] {
        match tok.tokenize(&text, word_len) {
            Ok(t) => {
                assert_eq!(t.ids.len(), word_len);
                assert_eq!(t.ids[0], SOT);
                let eot = t.ids.iter().rposition(|&id| id == EOT).expect("EOT present");
                assert!(t.ids[eot + 1..].iter().all(|&id| id == 0), "only padding after the last EOT");
                assert!(t.ids.iter().all(|&id| (0..VOCAB_SIZE as i64).contains(&id)));
                assert_eq!(t.truncated, t.n_ids > word_len);
                assert!(tok.decode(&t.ids[..eot + 1]).is_ok());
            }
            Err(e) => assert!(text.len() > MAX_TEXT_BYTES, "refused a text of {} bytes: {e}", text.len()),
        }
    }
});
