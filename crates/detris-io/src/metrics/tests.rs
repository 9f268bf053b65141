//! Hand-made masks with known mIoU, oIoU and Pr@X.

use super::*;

/// A 1-D mask of `len` pixels with `on` set.
fn mask(len: usize, on: &[usize]) -> Vec<bool> {
    (0..len).map(|i| on.contains(&i)).collect()
}

/// Six sentences: partial overlap, perfect, empty prediction, empty ground
/// truth, both empty, and 9/10 (just below Pr@0.9 because of the 1e-6).
fn six_sentences() -> (Metrics, Vec<f64>) {
    let mut m = Metrics::new();
    let ious = vec![
        m.push(&mask(20, &[0, 1, 2, 3]), &mask(20, &[1, 2, 3, 4])).unwrap(),
        m.push(&mask(20, &(5..15).collect::<Vec<_>>()), &mask(20, &(5..15).collect::<Vec<_>>())).unwrap(),
        m.push(&mask(20, &[]), &mask(20, &[7, 8, 9])).unwrap(),
        m.push(&mask(20, &[0, 19]), &mask(20, &[])).unwrap(),
        m.push(&mask(20, &[]), &mask(20, &[])).unwrap(),
        m.push(&mask(20, &(0..9).collect::<Vec<_>>()), &mask(20, &(0..10).collect::<Vec<_>>())).unwrap(),
    ];
    (m, ious)
}

#[test]
fn per_sentence_iou_is_i_over_u_plus_epsilon() {
    let (_, ious) = six_sentences();
    let want = [3.0 / (5.0 + 1e-6), 10.0 / (10.0 + 1e-6), 0.0, 0.0, 0.0, 9.0 / (10.0 + 1e-6)];
    assert_eq!(ious, want);
}

#[test]
fn summary_of_six_sentences() {
    let (m, ious) = six_sentences();
    let s = m.summary();
    assert_eq!(s.count, 6);
    assert!((s.miou - ious.iter().sum::<f64>() / 6.0).abs() < 1e-15);
    assert!((s.miou - 0.4166665).abs() < 1e-6, "mIoU {}", s.miou);
    assert_eq!(s.oiou, 22.0 / 30.0);
    let fractions: Vec<f64> = s.prec.iter().map(|p| p.1).collect();
    assert_eq!(fractions, [3.0 / 6.0, 2.0 / 6.0, 2.0 / 6.0, 2.0 / 6.0, 1.0 / 6.0]);
    let thresholds: Vec<f32> = s.prec.iter().map(|p| p.0).collect();
    assert_eq!(thresholds, [0.5, 0.6, 0.7, 0.8, 0.9]);
}

#[test]
fn thresholds_are_strict_and_float32() {
    // 4/(5+1e-6) = 0.7999998 is not above 0.8f32; 1/(2+1e-6) is not above 0.5.
    let mut m = Metrics::new();
    m.push_counts(4, 5);
    m.push_counts(1, 2);
    let s = m.summary();
    assert_eq!(s.prec.map(|p| p.1), [0.5, 0.5, 0.5, 0.0, 0.0]);
    // Above 0.6 as f64 but not above 0.6f32 = 0.6000000238.
    let mut m = Metrics::new();
    m.push_counts(600_000_010, 1_000_000_000);
    assert_eq!(m.summary().prec[1].1, 0.0);
}

#[test]
fn merge_equals_one_accumulator() {
    let (whole, _) = six_sentences();
    let mut a = Metrics::new();
    a.push_counts(3, 5);
    a.push_counts(10, 10);
    a.push_counts(0, 3);
    let mut b = Metrics::new();
    b.push_counts(0, 2);
    b.push_counts(0, 0);
    b.push_counts(9, 10);
    a.merge(&b);
    assert_eq!(a.summary(), whole.summary());
}

#[test]
fn empty_and_mismatched() {
    let s = Metrics::new().summary();
    assert_eq!((s.miou, s.oiou, s.count), (0.0, 0.0, 0));
    let err = Metrics::new().push(&[true; 3], &[true; 4]).unwrap_err();
    assert!(err.to_string().contains("3 pixels"), "{err}");
}

#[test]
fn summary_serialises() {
    let (m, _) = six_sentences();
    let json = serde_json::to_value(m.summary()).unwrap();
    assert_eq!(json["count"], 6);
    assert_eq!(json["prec"][4][0].as_f64().unwrap() as f32, 0.9f32);
    let back: Summary = serde_json::from_value(json).unwrap();
    assert_eq!(back, m.summary());
}

#[test]
fn precision_labels_name_the_official_thresholds() {
    let labels: Vec<String> = prec_thresholds().into_iter().map(precision_label).collect();
    assert_eq!(labels, ["Pr@50", "Pr@60", "Pr@70", "Pr@80", "Pr@90"]);
}
