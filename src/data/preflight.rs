//! What a training run says about its data before the first step: how many refs each side
//! holds (and, split by photo, how many photos), the manifest lines left out, and the
//! sentences the model reads differently from how they are written (cut at the word length,
//! or with words outside a pruned vocabulary). A short summary with a few examples; `detris
//! data check` lists everything.

use std::collections::HashSet;

use anyhow::Result;
use detris_io::data::check::{check, CheckOptions, CheckReport, Listed, SentenceNote};

use super::DataSpec;

/// Examples shown per warning.
const EXAMPLES: usize = 3;

/// The lines to show at the start of training on `spec`, for a model reading `word_len`
/// token ids per sentence and knowing `vocabulary` (a pruned vocabulary; `None`: all of CLIP's).
pub fn training_notes(spec: &DataSpec, word_len: usize, vocabulary: Option<&[i64]>) -> Result<Vec<String>> {
    let opts = CheckOptions {
        word_len,
        vocabulary: vocabulary.map(|v| v.iter().copied().collect::<HashSet<i64>>()),
        photo_sizes: false,
        mask_areas: false,
        max_listed: EXAMPLES,
    };
    let mut lines = Vec::new();
    for (side, source) in [("train", &spec.train), ("val", &spec.val)] {
        let report = check(&source.open()?, &opts);
        lines.push(format!(
            "{side}: {} refs, {} sentences, {} photos from {}",
            report.refs,
            report.sentences,
            report.photos,
            source.describe()
        ));
        lines.extend(warnings(side, &report, vocabulary.map_or(0, <[i64]>::len)));
    }
    Ok(lines)
}

/// The warnings of one side's report, each a line with a few examples.
fn warnings(side: &str, r: &CheckReport, vocabulary_size: usize) -> Vec<String> {
    let mut lines = Vec::new();
    if !r.bad_lines.is_empty() {
        let shown: Vec<String> = r.bad_lines.iter().take(EXAMPLES).map(ToString::to_string).collect();
        lines.push(format!(
            "warning: {side}: {} manifest lines left out (`detris data check` lists them): {}",
            r.bad_lines.len(),
            shown.join("; ")
        ));
    }
    if r.truncated.count > 0 {
        lines.push(format!(
            "warning: {side}: {} sentences are longer than the model's {} token ids and are cut, e.g. {}",
            r.truncated.count,
            r.word_len,
            examples(&r.truncated)
        ));
    }
    if let Some(oov) = r.out_of_vocabulary.as_ref().filter(|o| o.sentences.count > 0) {
        let words: Vec<String> = oov.tokens.iter().take(8).map(|(w, n)| format!("{w} ×{n}")).collect();
        lines.push(format!(
            "warning: {side}: {} sentences have words outside the model's {vocabulary_size}-token vocabulary \
             (their embeddings are zero: the frozen text tower reads them as nothing): {}; e.g. {}",
            oov.sentences.count,
            words.join(", "),
            examples(&oov.sentences)
        ));
    }
    lines
}

fn examples(list: &Listed<SentenceNote>) -> String {
    let shown: Vec<String> =
        list.examples.iter().map(|n| format!("{}, sentence {}: {:?}", n.origin, n.sentence, n.text)).collect();
    shown.join("; ")
}
