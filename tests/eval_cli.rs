//! `detris eval`'s per-sentence records and `--visualize` pictures, checked against the
//! metrics they sum to, with the shipped model on a small synthetic data set.

mod common;

use std::collections::BTreeMap;

use detris::SentenceRecord;
use detris_io::metrics::{iou, prec_thresholds, Metrics};

use common::{detris_ok, fresh_temp_dir};

/// Equal up to float rounding: the JSON files are read back with serde_json, whose float
/// parsing may land one ulp off the value written, and sums in another order round
/// differently; 1e-12 is far below one sentence's weight in any figure here (1/15).
fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: {a} vs {b}");
}

#[test]
fn records_and_visualisation_sum_to_the_summary() {
    let dir = fresh_temp_dir("eval-records");
    let data = dir.join("data");
    detris_ok(&["data", "synth", "--out", data.to_str().unwrap(), "--seed", "5", "--images", "20"]);
    let (json, vis) = (dir.join("eval.json"), dir.join("vis"));
    let args =
        ["eval", "--device", "cpu", "--data", data.to_str().unwrap(), "--dataset", "synth", "--split", "val,test"];
    detris_ok(&[&args[..], &["--json", json.to_str().unwrap(), "--visualize", vis.to_str().unwrap()]].concat());

    let reports: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let text = std::fs::read_to_string(dir.join("eval.sentences.jsonl")).unwrap();
    let records: Vec<SentenceRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for report in reports.as_array().unwrap() {
        let split = report["split"].as_str().unwrap();
        let mine: Vec<&SentenceRecord> = records.iter().filter(|r| r.split == split).collect();
        let summary = &report["summary"];
        assert_eq!(mine.len() as u64, summary["count"].as_u64().unwrap(), "{split}: one record per sentence");
        // The records sum to the summary: the same accumulator over their counts gives the
        // same figures, and the mean of the IoUs is mIoU up to the order of the additions.
        let mut m = Metrics::new();
        for r in &mine {
            close(r.iou, iou(r.intersection, r.union), &r.sentence);
            m.push_counts(r.intersection, r.union);
        }
        let again = m.summary();
        let (i, u) = mine.iter().fold((0, 0), |(i, u), r| (i + r.intersection, u + r.union));
        close(summary["oiou"].as_f64().unwrap(), again.oiou, "oIoU");
        close(again.oiou, i as f64 / u as f64, "oIoU");
        let mean = mine.iter().map(|r| r.iou).sum::<f64>() / mine.len() as f64;
        close(summary["miou"].as_f64().unwrap(), mean, "mIoU");
        close(again.miou, mean, "mIoU");
        for (k, t) in prec_thresholds().iter().enumerate() {
            let above = mine.iter().filter(|r| r.iou > f64::from(*t)).count() as f64 / mine.len() as f64;
            close(summary["prec"][k][1].as_f64().unwrap(), above, &format!("{split} Pr@{t}"));
            assert_eq!(again.prec[k].1, above);
        }
        assert!(mine.iter().any(|r| r.iou > 0.5), "the shipped model finds some objects");

        // The pictures: the photo and the ground truth once per ref, and per sentence the
        // prediction named with its IoU, whose pixels give the record's counts.
        let dir = vis.join(split);
        let refs = detris_io::data::prepared::read_split(&data, "synth", split).unwrap();
        let by_id: BTreeMap<String, _> = refs.iter().map(|r| (r.segment_id.to_string(), r)).collect();
        for r in &mine {
            let source = detris_io::data::prepared::image_path(&data, &by_id[&r.ref_id].img_name);
            let ext = source.extension().unwrap().to_str().unwrap();
            let img = std::fs::read(dir.join(format!("{}-img.{ext}", r.ref_id))).unwrap();
            assert_eq!(img, std::fs::read(&source).unwrap(), "the photo as it is");
            let (gt, w, h) = detris_io::image::read_mask_png(dir.join(format!("{}-mask.png", r.ref_id))).unwrap();
            let stem = format!("{}-iou={:.2}-{}", r.ref_id, r.iou * 100.0, r.sentence.replace(' ', "_"));
            let (pred, pw, ph) = detris_io::image::read_mask_png(dir.join(format!("{stem}.png"))).unwrap();
            assert_eq!((pw, ph), (w, h));
            let pred: Vec<bool> = pred.iter().map(|&v| v == 255).collect();
            let gt: Vec<bool> = gt.iter().map(|&v| v == 255).collect();
            let counts = detris_io::metrics::intersection_union(&pred, &gt).unwrap();
            assert_eq!(counts, (r.intersection, r.union), "{stem}");
            let overlay = detris_io::image::load_rgb(dir.join(format!("{stem}-overlay.png"))).unwrap();
            assert_eq!(overlay.dimensions(), (w as u32, h as u32));
        }
    }

    // A higher threshold keeps fewer pixels: every prediction shrinks or stays.
    let high = dir.join("high.json");
    detris_ok(&[&args[..], &["--json", high.to_str().unwrap(), "--threshold", "0.9"]].concat());
    let text = std::fs::read_to_string(dir.join("high.sentences.jsonl")).unwrap();
    let strict: Vec<SentenceRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(strict.len(), records.len());
    for (a, b) in records.iter().zip(&strict) {
        assert_eq!((&a.ref_id, a.sentence_index), (&b.ref_id, b.sentence_index));
        assert!(b.intersection <= a.intersection, "{}: a stricter threshold cannot add pixels", a.sentence);
    }
    assert!(strict.iter().zip(&records).any(|(b, a)| b.union != a.union), "0.9 changes some masks");
    std::fs::remove_dir_all(&dir).ok();
}
