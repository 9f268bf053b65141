//! `detris segment` end to end with the fixture model, and its refusals.

mod common;

use std::process::Command;

use common::*;
use detris::model::Ctx;
use detris::segment::Segmenter;
use detris::weights::{self, ConfigChoice, WeightFiles};
use tch::Device;

fn fixture_model() -> detris::Detris {
    let files = WeightFiles { checkpoint: Some(fixture("tiny/detris_ckpt.pth")), ..Default::default() };
    let choice = ConfigChoice { config: Some(fixture("tiny/config.json")), ..Default::default() };
    weights::load_model(&files, &choice, Device::Cpu).unwrap()
}

fn segment_cmd(extra: &[&str]) -> std::process::Output {
    let ckpt = fixture("tiny/detris_ckpt.pth");
    let cfg = fixture("tiny/config.json");
    let mut args =
        vec!["segment", "--checkpoint", ckpt.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--device", "cpu"];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_detris")).args(&args).output().unwrap()
}

#[test]
fn segment_writes_mask_overlay_and_json_equal_to_the_library_forward() {
    let out = std::env::temp_dir().join(format!("detris-segment-{}", std::process::id()));
    let photo = detris_io::fixtures::images_dir().join("coffee.png");
    let texts = ["the cup of coffee", "the spoon on the right"];
    let o = segment_cmd(&[
        "--image",
        photo.to_str().unwrap(),
        "--text",
        texts[0],
        "--text",
        texts[1],
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let rgb = detris_io::image::load_rgb(&photo).unwrap();
    let (w, h) = rgb.dimensions();
    let expected = Segmenter::new(fixture_model()).segment(&rgb, &texts.map(String::from)).unwrap();
    for (i, e) in expected.iter().enumerate() {
        let stem = out.join(format!("{:02}-{}", i + 1, texts[i].replace(' ', "-")));
        let (mask, mw, mh) = detris_io::image::read_mask_png(stem.with_extension("mask.png")).unwrap();
        assert_eq!((mw, mh), (w as usize, h as usize));
        assert!(mask.iter().all(|&v| v == 0 || v == 255));
        let ours: Vec<bool> = mask.iter().map(|&v| v == 255).collect();
        assert_eq!(ours, e.mask, "sentence {i}: the CLI mask differs from the library's");
        let overlay = detris_io::image::load_rgb(stem.with_extension("overlay.png")).unwrap();
        assert_eq!(overlay.dimensions(), (w, h));
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(stem.with_extension("json")).unwrap()).unwrap();
        assert_eq!(record["area"].as_u64().unwrap() as usize, e.area);
        assert_eq!(record["sentence"], texts[i]);
    }
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn several_sentences_in_one_batch_equal_one_pass_each() {
    let model = fixture_model();
    let io = read_st("tiny/io.safetensors");
    let img = io["input.img"].narrow(0, 1, 1);
    let ids = &io["input.word"];
    let k_all = ids.size()[0];
    assert!(k_all >= 2, "the fixture has several sentences");
    // One batch of all, batches of one (CPU's choice), and the device's choice.
    for batch in [k_all, 1] {
        let batched = tch::no_grad(|| model.forward_sentences_batched(&img, ids, batch, &Ctx::eval()));
        let default = tch::no_grad(|| model.forward_sentences(&img, ids, &Ctx::eval()));
        assert!(max_abs_diff(&batched, &default) < 1e-4);
        check_one_pass_each(&model, &img, ids, &batched);
    }
}

fn check_one_pass_each(model: &detris::Detris, img: &tch::Tensor, ids: &tch::Tensor, batched: &tch::Tensor) {
    for k in 0..ids.size()[0] {
        let single = tch::no_grad(|| model.forward(img, &ids.narrow(0, k, 1), &Ctx::eval()));
        // Same arithmetic up to batching order (f32 rounding, measured 1.3e-5 on
        // logits of scale 5): within the f32 parity tolerance 1e-4.
        let d = max_abs_diff(&batched.narrow(0, k, 1), &single);
        eprintln!("sentence {k}: batched vs single max abs diff {d:e}, logit scale {:e}", max_abs(&single));
        assert!(d < 1e-4);
    }
}

#[test]
fn bad_input_is_refused_with_exit_2_and_a_message() {
    let photo = detris_io::fixtures::images_dir().join("coffee.png");
    let out = std::env::temp_dir().join(format!("detris-segment-bad-{}", std::process::id()));
    let check = |extra: &[&str], needle: &str| {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["--out", out.to_str().unwrap()]);
        let o = segment_cmd(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    };
    check(&["--image", photo.to_str().unwrap(), "--text", "   "], "empty sentence");
    check(
        &["--image", photo.to_str().unwrap(), "--text", "x", "--variant", "detris-xxl"],
        "unknown variant `detris-xxl`",
    );
    check(&["--image", photo.to_str().unwrap(), "--text", "x", "--precision", "f16"], "f16 needs a CUDA device");
    check(&["--image", photo.to_str().unwrap(), "--text", "x", "--precision", "fp8"], "invalid value 'fp8'");
    check(&["--image", photo.to_str().unwrap(), "--text", "x", "--post", "tst"], "[possible values: test, demo]");
    let not_image = fixture("tiny/config.json");
    check(&["--image", not_image.to_str().unwrap(), "--text", "the cup"], "not a JPEG, PNG or WebP image");
    check(&["--image", "/nonexistent/photo.jpg", "--text", "the cup"], "/nonexistent/photo.jpg");
    let tiny = std::env::temp_dir().join(format!("detris-tiny-{}.png", std::process::id()));
    image::RgbImage::new(4, 4).save(&tiny).unwrap();
    check(&["--image", tiny.to_str().unwrap(), "--text", "the cup"], "at least 8 pixels");
    std::fs::remove_file(&tiny).ok();
}

#[test]
fn threshold_and_probabilities_flags_write_what_the_library_gives() {
    let out = std::env::temp_dir().join(format!("detris-segment-prob-{}", std::process::id()));
    let photo = detris_io::fixtures::images_dir().join("coffee.png");
    let text = "the cup of coffee";
    let o = segment_cmd(&[
        "--image",
        photo.to_str().unwrap(),
        "--text",
        text,
        "--threshold",
        "0.5",
        "--probabilities",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rgb = detris_io::image::load_rgb(&photo).unwrap();
    let seg = Segmenter::builder().model(fixture_model()).threshold(0.5).probabilities(true).build().unwrap();
    let want = &seg.segment(&rgb, &[text]).unwrap()[0];
    let stem = out.join(format!("01-{}", text.replace(' ', "-")));
    let (mask, _, _) = detris_io::image::read_mask_png(stem.with_extension("mask.png")).unwrap();
    let ours: Vec<bool> = mask.iter().map(|&v| v == 255).collect();
    assert_eq!(ours, want.mask, "the mask at --threshold 0.5");
    let heat = std::fs::read(stem.with_extension("prob.png")).unwrap();
    let prob = want.probabilities.as_ref().unwrap();
    assert_eq!(heat, detris::mask_formats::probability_png(prob, want.width, want.height).unwrap());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stem.with_extension("json")).unwrap()).unwrap();
    assert_eq!(record["tokens"].as_u64().unwrap() as usize, want.tokens);
    let bad = segment_cmd(&["--image", photo.to_str().unwrap(), "--text", text, "--threshold", "2"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a probability between 0 and 1"));
    std::fs::remove_dir_all(&out).ok();
}
