//! Samples that cannot be read (a corrupt photo, a broken mask) do not end a
//! long run: each is left out of its batch, named in the log, and counted in
//! the epoch's record, until the run has skipped more than `--max-bad-samples`;
//! then it stops with an error naming every one.

use anyhow::{bail, Result};
use detris_io::data::loader::SampleError;
use serde::{Deserialize, Serialize};

use super::history::{EpochRecord, SkippedSample};

/// The samples skipped so far in the epoch in progress (kept in checkpoints,
/// so that a resumed epoch counts them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSkips {
    /// Those this process met (rank 0's in a data-parallel run).
    pub samples: Vec<SkippedSample>,
    /// Every rank's.
    pub count: usize,
}

/// Records the samples a batch left out (`skipped`, this process's) and
/// `count_all` (every rank's; the same as `skipped.len()` in one process):
/// each is named through `log`; past `max` in the run (`history` holds the
/// finished epochs), an error naming them all.
pub fn note(
    skips: &mut EpochSkips,
    history: &[EpochRecord],
    skipped: &[SampleError],
    count_all: usize,
    max: usize,
    log: &mut dyn FnMut(&str),
) -> Result<()> {
    for s in skipped {
        let s = SkippedSample::from(s);
        log(&format!("skipped a sample that cannot be read: {s}"));
        skips.samples.push(s);
    }
    skips.count += count_all;
    let total = history.iter().map(|r| r.skipped_count).sum::<usize>() + skips.count;
    if total > max {
        let named: Vec<String> =
            history.iter().flat_map(|r| &r.skipped).chain(&skips.samples).map(|s| format!("  {s}")).collect();
        bail!(
            "stopped: {total} samples could not be read, more than --max-bad-samples {max}; fix or remove them \
             (or raise the limit) and --resume:\n{}",
            named.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use detris_io::data::loader::Origin;

    fn bad(line: usize) -> SampleError {
        let origin = Origin::Manifest { manifest: "train.jsonl".into(), line };
        SampleError { origin, ref_index: line - 1, sentence_index: 0, error: "cannot decode".into() }
    }

    #[test]
    fn skipped_samples_are_named_counted_and_stop_the_run_past_the_limit() {
        let (mut skips, mut lines) = (EpochSkips::default(), Vec::new());
        note(&mut skips, &[], &[bad(3)], 1, 2, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(skips.count, 1);
        assert!(lines[0].contains("train.jsonl line 3, sentence 1: cannot decode"), "{lines:?}");
        note(&mut skips, &[], &[bad(7)], 1, 2, &mut |_| {}).unwrap();
        let err = note(&mut skips, &[], &[bad(9)], 1, 2, &mut |_| {}).unwrap_err().to_string();
        for line in [3, 7, 9] {
            assert!(err.contains(&format!("train.jsonl line {line},")), "{err}");
        }
        assert!(err.contains("3 samples") && err.contains("--max-bad-samples 2"), "{err}");
    }
}
