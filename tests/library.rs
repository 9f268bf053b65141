//! The library's front door with the shipped model: the builder's options, the typed
//! results, the warnings the CLI and the server print, and cancellation.

mod common;

use std::cell::Cell;

use detris::{load_rgb, Cancelled, Device, PostPath, Segmenter};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/example.png");
const SENTENCE: &str = "the shape left of the big square";

fn shipped() -> detris::SegmenterBuilder {
    Segmenter::builder().device(Device::Cpu)
}

#[test]
fn threshold_and_probabilities_give_consistent_masks() {
    let photo = load_rgb(EXAMPLE).unwrap();
    let official = shipped().probabilities(true).build().unwrap();
    let r = &official.segment(&photo, &[SENTENCE]).unwrap()[0];
    let prob = r.probabilities.as_ref().expect("asked for");
    assert_eq!(prob.len(), r.width * r.height);
    let above: Vec<bool> = prob.iter().map(|&p| p > 0.35).collect();
    assert_eq!(above, r.mask, "the mask is the probability map above the official threshold");
    let inside: f64 = prob.iter().zip(&r.mask).filter(|(_, &m)| m).map(|(&p, _)| f64::from(p)).sum();
    assert!((inside / r.area as f64 - f64::from(r.mean_probability)).abs() < 1e-6);

    let strict = shipped().threshold(0.8).build().unwrap();
    let s = &strict.segment(&photo, &[SENTENCE]).unwrap()[0];
    assert!(s.probabilities.is_none(), "not asked for");
    let want: Vec<bool> = prob.iter().map(|&p| p > 0.8).collect();
    assert_eq!(s.mask, want);
    assert!(s.area < r.area, "0.8 keeps fewer pixels than 0.35 ({} vs {})", s.area, r.area);

    let demo = shipped().post(PostPath::Demo).build().unwrap();
    assert_eq!(demo.post(), PostPath::Demo);
    assert_eq!(demo.segment(&photo, &[SENTENCE]).unwrap()[0].width, r.width);
}

#[test]
fn bad_options_are_named() {
    let e = shipped().threshold(1.5).build().unwrap_err().to_string();
    assert!(e.contains("threshold 1.5"), "{e}");
    let e = shipped().precision(detris::Kind::Int64).build().unwrap_err().to_string();
    assert!(e.contains("precision Int64"), "{e}");
    let e = shipped().checkpoint("/no/such/file.pth").build().unwrap_err().to_string();
    assert!(e.contains("/no/such/file.pth"), "{e}");
    let seg = shipped().build().unwrap();
    let photo = load_rgb(EXAMPLE).unwrap();
    assert!(seg.segment(&photo, &[" "]).unwrap_err().to_string().contains("empty sentence"));
    assert!(seg.segment(&photo, &[] as &[&str]).is_err());
}

#[test]
fn long_sentences_and_unknown_words_are_reported() {
    let seg = shipped().build().unwrap();
    let photo = load_rgb(EXAMPLE).unwrap();
    let word_len = seg.model.config.word_len;
    // More words than the word length holds, all of the synthetic language.
    let long = vec!["the shape left of the big square"; word_len].join(" and ");
    let unknown = "the zebra";
    let results = seg.segment(&photo, &[long.as_str(), unknown, SENTENCE]).unwrap();

    let cut = &results[0];
    assert!(cut.truncated && cut.tokens > word_len, "{} tokens", cut.tokens);
    let kept = cut.kept_text.as_ref().expect("a cut sentence says what was kept");
    assert!(long.starts_with(kept.as_str()), "{kept:?} is the start of the sentence");
    assert!(cut.warnings(0)[0].contains("sentence 1 is longer than the model's"), "{:?}", cut.warnings(0));

    let odd = &results[1];
    assert!(!odd.truncated && odd.kept_text.is_none());
    assert_eq!(odd.unknown_words, ["zebra"], "the shipped model knows only the synthetic language");
    assert!(odd.warnings(1).iter().any(|w| w.contains("never saw (zebra)")), "{:?}", odd.warnings(1));

    assert!(results[2].warnings(2).is_empty());
    assert_eq!(results[2].tokens, results[2].token_ids.iter().filter(|&&id| id != 0).count());
}

#[test]
fn cancellation_is_asked_between_sentences() {
    let seg = shipped().build().unwrap();
    let photo = load_rgb(EXAMPLE).unwrap();
    let asked = Cell::new(0);
    // Stop at the third question: before the model, before sentence 1, before sentence 2.
    let e = seg
        .segment_until(&photo, &[SENTENCE, "the big square", "the small circle"], || {
            asked.set(asked.get() + 1);
            asked.get() == 3
        })
        .unwrap_err();
    assert_eq!(e.downcast_ref::<Cancelled>(), Some(&Cancelled));
    assert_eq!(asked.get(), 3);
    let all = seg.segment_until(&photo, &[SENTENCE, "the big square"], || false).unwrap();
    let plain = seg.segment(&photo, &[SENTENCE, "the big square"]).unwrap();
    assert_eq!(all.iter().map(|r| &r.mask).collect::<Vec<_>>(), plain.iter().map(|r| &r.mask).collect::<Vec<_>>());
}

#[test]
fn the_server_gives_the_same_warnings_and_masks_as_the_library() {
    use common::http_client as client;
    use detris::serve::{self, ServeOptions};
    // A threshold other than the official one, so that the server is seen to apply it.
    let threshold = 0.6;
    let options =
        ServeOptions { bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)), threshold, ..Default::default() };
    let running = serve::spawn(|| Ok(shipped().build()?.model), options).unwrap();
    let photo = std::fs::read(EXAMPLE).unwrap();
    let (ctype, body) = client::Form::new()
        .file("image", "example.png", "image/png", &photo)
        .text("text", "the zebra")
        .text("text", SENTENCE)
        .finish();
    let answer = client::request(running.addr(), "POST", "/v1/segment", Some(&ctype), &body).unwrap();
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = answer.json().unwrap();
    let seg = shipped().threshold(threshold).build().unwrap();
    let want = seg.segment(&load_rgb(EXAMPLE).unwrap(), &["the zebra", SENTENCE]).unwrap();
    for (i, w) in want.iter().enumerate() {
        assert_eq!(answer["results"][i]["area"], w.area, "sentence {i}");
        assert_eq!(
            answer["results"][i]["rle"]["counts"],
            detris::mask_formats::RleJson::encode(&w.mask, w.width, w.height).unwrap().counts
        );
        let got: Vec<String> = answer["results"][i]["warnings"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        assert_eq!(got, w.warnings(i), "sentence {i}");
    }
    assert!(!want[0].warnings(0).is_empty() && want[1].warnings(1).is_empty());
    let official = shipped().build().unwrap().segment(&load_rgb(EXAMPLE).unwrap(), &[SENTENCE]).unwrap();
    assert_ne!(official[0].area, want[1].area, "the threshold changes this mask");
    running.stop().unwrap();
}
