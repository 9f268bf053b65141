//! `detris serve` end to end over loopback: every endpoint, every limit, malformed
//! input, the bounded queue, the timeout, the log lines, and masks identical to
//! `Segmenter::segment` and to `detris segment` on the same input.
//! The tiny fixture model (`../shared/fixtures/tiny`) stands in for a real one.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use common::http_client::{self as client, Form};
use detris::segment::Segmenter;
use detris::serve::api::{rle_encode, SegmentResponse};
use detris::serve::{self, Limits, Seconds, ServeOptions};
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris::Detris;
use detris_io::data::coco_mask::Rle;
use detris_io::fixtures;
use detris_io::image::Rgb;
use detris_io::tokenizer::ClipTokenizer;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn checkpoint() -> PathBuf {
    fixtures::path("tiny/detris_ckpt.pth")
}
fn config() -> PathBuf {
    fixtures::path("tiny/config.json")
}
/// The fixture model's config: every size the tests compare with comes from it.
fn tiny_config() -> detris::DetrisConfig {
    detris::weights::read_config_file(&config()).unwrap()
}
fn coffee() -> Vec<u8> {
    std::fs::read(fixtures::images_dir().join("coffee.png")).unwrap()
}

fn load_tiny() -> anyhow::Result<Detris> {
    weights::load_model(
        &WeightFiles { checkpoint: Some(checkpoint()), dinov2: None, clip: None },
        &ConfigChoice { config: Some(config()), ..Default::default() },
        tch::Device::Cpu,
    )
}

fn start(limits: Limits) -> serve::Running {
    let options = ServeOptions { bind: SocketAddr::from(([127, 0, 0, 1], 0)), limits, ..Default::default() };
    serve::spawn(load_tiny, options).unwrap()
}

/// One server with the default limits, shared by the tests that do not change them.
fn shared() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let running = Box::leak(Box::new(start(Limits::default())));
        running.addr()
    })
}

fn multipart(image: &[u8], texts: &[&str]) -> (String, Vec<u8>) {
    let mut form = Form::new().file("image", "coffee.png", "image/png", image);
    for t in texts {
        form = form.text("text", t);
    }
    form.finish()
}

fn post(addr: SocketAddr, ct: &str, body: &[u8]) -> client::Response {
    client::request(addr, "POST", "/v1/segment", Some(ct), body).unwrap()
}

fn post_json(addr: SocketAddr, v: &serde_json::Value) -> client::Response {
    post(addr, "application/json", v.to_string().as_bytes())
}

/// A 4xx/5xx with a JSON error naming `limit` (or no limit for `None`).
#[track_caller]
fn assert_error(r: &client::Response, status: u16, limit: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json().unwrap();
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    assert_eq!(v["limit"].as_str(), limit, "{v}");
}

fn ok(r: &client::Response) -> SegmentResponse {
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

fn png_grey(bytes: &[u8]) -> (Vec<u8>, u32, u32) {
    let img = image::load_from_memory(bytes).unwrap();
    let g = img.to_luma8();
    let (w, h) = g.dimensions();
    (g.into_raw(), w, h)
}

fn mask_from_png_b64(b64: &str) -> (Vec<bool>, u32, u32) {
    let (grey, w, h) = png_grey(&B64.decode(b64).unwrap());
    assert!(grey.iter().all(|&v| v == 0 || v == 255), "mask PNG values are 0/255");
    (grey.iter().map(|&v| v == 255).collect(), w, h)
}

fn mask_from_rle(rle: &detris::serve::api::RleJson) -> Vec<bool> {
    let r = Rle::from_compressed(&rle.counts, rle.size[0], rle.size[1]).unwrap();
    r.decode().iter().map(|&v| v == 1).collect()
}

#[test]
fn page_is_one_self_contained_file() {
    let r = client::get(shared(), "/").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.text();
    for needle in
        ["<input id=\"file\" type=\"file\"", "id=\"texts\"", "id=\"go\"", "/v1/segment", "<style>", "<script>"]
    {
        assert!(html.contains(needle), "page lacks {needle}");
    }
    for external in ["src=\"http", "href=\"http", "<link", "url(http", "@import", "src=\"//"] {
        assert!(!html.contains(external), "page loads an external asset: {external}");
    }
}

#[test]
fn healthz_model_and_openapi() {
    let addr = shared();
    let h = client::get(addr, "/healthz").unwrap();
    assert_eq!(h.status, 200);
    let h = h.json().unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["queue"], Limits::default().queue);

    let cfg = tiny_config();
    let m = client::get(addr, "/v1/model").unwrap().json().unwrap();
    assert_eq!(m["input_size"], cfg.input_size);
    assert_eq!(m["word_len"], cfg.word_len);
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["post"], "test");
    assert_eq!(m["dims"]["dino_dim"], cfg.dino_dim);
    assert_eq!(m["dims"]["txt_width"], cfg.txt_width);
    assert_eq!(m["config"]["name"], m["variant"]);

    let o = client::get(addr, "/openapi.json").unwrap();
    assert_eq!(o.status, 200);
    assert_eq!(o.header("content-type"), Some("application/json"));
    let o = o.json().unwrap();
    assert!(o["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/", "/v1/segment", "/v1/model", "/healthz", "/openapi.json"] {
        assert!(o["paths"][path].is_object(), "openapi.json lacks {path}");
    }
    let limits: Vec<&str> = o["components"]["schemas"]["Error"]["properties"]["limit"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for l in [
        "max_body_bytes",
        "max_image_pixels",
        "max_image_side",
        "max_work_pixels",
        "max_answer_bytes",
        "max_sentences",
        "max_sentence_chars",
        "min_image_side",
        "queue",
        "max_uploads",
        "max_buffered_bytes",
        "max_connections",
        "min_upload_rate",
        "timeout_ms",
    ] {
        assert!(limits.contains(&l), "openapi.json does not name the limit {l}");
    }
    // Both bodies are closed objects whose sentence lists say the server's limits.
    let body = &o["paths"]["/v1/segment"]["post"]["requestBody"]["content"];
    let d = Limits::default();
    for (ct, field) in [("multipart/form-data", "text"), ("application/json", "texts")] {
        let schema = &body[ct]["schema"];
        assert_eq!(schema["additionalProperties"], false, "{ct}");
        assert_eq!(schema["properties"][field]["minItems"], 1, "{ct}");
        assert_eq!(schema["properties"][field]["maxItems"], d.max_sentences, "{ct}");
    }
    let sentence = &o["components"]["schemas"]["Sentence"];
    assert_eq!(
        (sentence["minLength"].as_u64(), sentence["maxLength"].as_u64()),
        (Some(1), Some(d.max_sentence_chars as u64))
    );

    assert_error(&client::get(addr, "/nope").unwrap(), 404, None);
    assert_error(&client::get(addr, "/v1/segment").unwrap(), 405, None);
    assert_error(&client::request(addr, "DELETE", "/healthz", None, &[]).unwrap(), 405, None);
}

/// The server's masks are `Segmenter::segment`'s, bit for bit, as PNG and as RLE.
#[test]
fn multipart_masks_equal_segmenter() {
    let bytes = coffee();
    // Two short sentences and one longer than the model's word length, whatever it is.
    let word_len = tiny_config().word_len;
    let cut_at = |t: &str| ClipTokenizer::global().tokenize(t, word_len).unwrap().truncated;
    let mut long = String::from(
        "a very long referring expression about the small striped cup sitting next to the big red plate on the right",
    );
    while !cut_at(&long) {
        long += " of the table";
    }
    let texts = ["the cup on the table", "the spoon", long.as_str()];
    let (ct, body) = multipart(&bytes, &texts);
    let resp = ok(&post(shared(), &ct, &body));

    let photo = detris_io::image::decode_rgb(&bytes, "coffee.png").unwrap();
    let seg = Segmenter::new(load_tiny().unwrap());
    let owned: Vec<String> = texts.iter().map(|s| s.to_string()).collect();
    let want = seg.segment(&photo, &owned).unwrap();

    assert_eq!((resp.width, resp.height), (photo.width() as usize, photo.height() as usize));
    assert_eq!(resp.results.len(), texts.len());
    for (i, (got, want)) in resp.results.iter().zip(&want).enumerate() {
        assert_eq!(got.sentence, texts[i]);
        let (png_mask, w, h) = mask_from_png_b64(&got.mask_png);
        assert_eq!((w as usize, h as usize), (want.width, want.height));
        assert!(png_mask == want.mask, "sentence {i}: PNG mask differs from Segmenter::segment");
        assert_eq!(got.rle.size, [want.height, want.width]);
        assert!(mask_from_rle(&got.rle) == want.mask, "sentence {i}: RLE mask differs");
        assert_eq!(got.area, want.area);
        assert_eq!(got.area, want.mask.iter().filter(|&&m| m).count());
        assert_eq!(got.mean_probability, want.mean_probability);
        assert_eq!(got.token_ids, want.token_ids);
        assert_eq!(got.truncated, want.truncated);
        // The overlay is detris_io::image::overlay of the photo, at the photo's size.
        let over = image::load_from_memory(&B64.decode(&got.overlay_png).unwrap()).unwrap().to_rgb8();
        let palette = [[255, 64, 64], [64, 160, 255], [64, 220, 96]];
        let expected: Rgb = detris_io::image::overlay(&photo, &want.mask, palette[i]).unwrap();
        assert!(over == expected, "sentence {i}: overlay differs");
        assert!(got.timings_ms.forward > 0.0);
    }
    // Which sentences are cut follows from the model's word length (the tokenizer says it);
    // the texts are chosen so that both cases occur.
    let cut: Vec<bool> = texts.iter().map(|t| cut_at(t)).collect();
    assert!(cut.contains(&true) && cut.contains(&false), "{cut:?} at word length {word_len}");
    for (got, &cut) in resp.results.iter().zip(&cut) {
        assert_eq!(got.truncated, cut, "{}", got.sentence);
        assert_eq!(got.tokens > word_len, cut, "{}", got.sentence);
    }
    assert!(resp.timings_ms.total >= resp.timings_ms.inference);
}

/// The JSON form gives what `detris segment` writes to disk.
#[test]
fn json_masks_equal_detris_segment_cli() {
    let bytes = coffee();
    let text = "the white cup on the left";
    let out = tempdir("cli-out");
    let status = Command::new(env!("CARGO_BIN_EXE_detris"))
        .args(["segment", "--device", "cpu", "--checkpoint"])
        .arg(checkpoint())
        .arg("--config")
        .arg(config())
        .arg("--image")
        .arg(fixtures::images_dir().join("coffee.png"))
        .args(["--text", text, "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mask_file = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".mask.png"))
        .unwrap();
    let (cli_mask, w, h) = detris_io::image::read_mask_png(&mask_file).unwrap();

    let v = serde_json::json!({ "image": B64.encode(&bytes), "texts": [text] });
    let resp = ok(&post_json(shared(), &v));
    let (mask, mw, mh) = mask_from_png_b64(&resp.results[0].mask_png);
    assert_eq!((mw as usize, mh as usize), (w, h));
    let cli: Vec<bool> = cli_mask.iter().map(|&v| v != 0).collect();
    assert!(mask == cli, "server mask differs from `detris segment`");
    assert_eq!(mask_from_rle(&resp.results[0].rle), cli);

    // A data: URL prefix is accepted too.
    let v = serde_json::json!({ "image": format!("data:image/png;base64,{}", B64.encode(&bytes)), "texts": [text] });
    assert_eq!(ok(&post_json(shared(), &v)).results[0].mask_png, resp.results[0].mask_png);
}

#[test]
fn rle_is_pycocotools_layout() {
    // 2 rows × 3 columns, row-major:
    //   1 0 1
    //   1 0 0
    // column-major: 1 1 | 0 0 | 1 0 → runs (bg first) 0, 2, 2, 1, 1.
    let mask = [true, false, true, true, false, false];
    let rle = rle_encode(&mask, 3, 2).unwrap();
    assert_eq!(rle.counts(), &[0, 2, 2, 1, 1]);
    assert_eq!(rle.area(), 3);
    assert_eq!(rle.decode(), vec![1, 0, 1, 1, 0, 0]);
    let back = Rle::from_compressed(&rle.to_compressed(), 2, 3).unwrap();
    assert_eq!(back, rle);
    // An empty mask is one background run; a full one a zero run then everything.
    assert_eq!(rle_encode(&[false; 6], 3, 2).unwrap().counts(), &[6]);
    assert_eq!(rle_encode(&[true; 6], 3, 2).unwrap().counts(), &[0, 6]);
}

#[test]
fn malformed_input_is_4xx_with_a_json_error() {
    let addr = shared();
    let img = coffee();
    // Not an image.
    let (ct, body) =
        Form::new().file("image", "notes.txt", "text/plain", b"hello, not a picture").text("text", "the cup").finish();
    assert_error(&post(addr, &ct, &body), 400, None);
    // A truncated PNG.
    let (ct, body) = multipart(&img[..2000], &["the cup"]);
    assert_error(&post(addr, &ct, &body), 400, None);
    // Empty form.
    let (ct, body) = Form::new().finish();
    assert_error(&post(addr, &ct, &body), 400, None);
    // Missing text.
    let (ct, body) = multipart(&img, &[]);
    let r = post(addr, &ct, &body);
    assert_error(&r, 400, None);
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("sentence"));
    // Missing image.
    let (ct, body) = Form::new().text("text", "the cup").finish();
    let r = post(addr, &ct, &body);
    assert_error(&r, 400, None);
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("image"));
    // Empty sentence.
    let (ct, body) = multipart(&img, &["the cup", "  \n "]);
    assert_error(&post(addr, &ct, &body), 400, None);
    // Two images, an unknown field.
    let (ct, body) = Form::new()
        .file("image", "a.png", "image/png", &img)
        .file("image", "b.png", "image/png", &img)
        .text("text", "x")
        .finish();
    assert_error(&post(addr, &ct, &body), 400, None);
    let (ct, body) = Form::new().file("image", "a.png", "image/png", &img).text("txt", "the cup").finish();
    assert_error(&post(addr, &ct, &body), 400, None);
    // Multipart without a boundary, or a body that is not multipart.
    assert_error(&post(addr, "multipart/form-data", b"whatever"), 400, None);
    assert_error(&post(addr, "multipart/form-data; boundary=xyz", b"not a form at all"), 400, None);
    // Wrong JSON: syntax, types, missing and unknown fields, bad base64, base64 of a non-image.
    assert_error(&post(addr, "application/json", b"{\"image\": \"abc\", \"texts\": [\"the cup\""), 400, None);
    assert_error(&post_json(addr, &serde_json::json!({"image": 12, "texts": ["the cup"]})), 400, None);
    assert_error(&post_json(addr, &serde_json::json!({"image": B64.encode(&img), "texts": "the cup"})), 400, None);
    assert_error(&post_json(addr, &serde_json::json!({"image": B64.encode(&img)})), 400, None);
    assert_error(&post_json(addr, &serde_json::json!({"texts": ["the cup"]})), 400, None);
    assert_error(
        &post_json(addr, &serde_json::json!({"image": B64.encode(&img), "texts": ["x"], "extra": 1})),
        400,
        None,
    );
    assert_error(&post_json(addr, &serde_json::json!({"image": B64.encode(&img), "texts": []})), 400, None);
    assert_error(&post_json(addr, &serde_json::json!({"image": "!!not base64!!", "texts": ["the cup"]})), 400, None);
    assert_error(
        &post_json(addr, &serde_json::json!({"image": B64.encode(b"GIF89a....."), "texts": ["the cup"]})),
        400,
        None,
    );
    // Neither multipart nor JSON.
    assert_error(&post(addr, "text/plain", b"the cup"), 415, None);
    assert_error(&client::request(addr, "POST", "/v1/segment", None, b"").unwrap(), 415, None);
    // The server still works afterwards.
    let (ct, body) = multipart(&img, &["the cup"]);
    ok(&post(addr, &ct, &body));
}

#[test]
fn every_limit_is_a_4xx_that_names_it() {
    let limits = Limits {
        max_body_bytes: 600_000,
        max_image_pixels: 200_000,
        max_image_side: 1000,
        max_work_pixels: 100_000,
        max_sentences: 3,
        max_sentence_chars: 200,
        ..Limits::default()
    };
    let running = start(limits.clone());
    let addr = running.addr();
    // Body size: astronaut.png is 790 KB (and also over the pixel limit: the body is checked first).
    let big = std::fs::read(fixtures::images_dir().join("astronaut.png")).unwrap();
    assert!(big.len() > limits.max_body_bytes);
    let (ct, body) = multipart(&big, &["the person"]);
    assert_error(&post(addr, &ct, &body), 413, Some("max_body_bytes"));
    assert_error(
        &post_json(addr, &serde_json::json!({"image": B64.encode(&big), "texts": ["a"]})),
        413,
        Some("max_body_bytes"),
    );
    // Pixels: coffee.png is over the pixel limit; a thumbnail of it passes.
    let photo = detris_io::image::decode_rgb(&coffee(), "c").unwrap();
    let (w, h) = photo.dimensions();
    assert!(u64::from(w * h) > limits.max_image_pixels && w.max(h) <= limits.max_image_side);
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    let r = post(addr, &ct, &body);
    assert_error(&r, 413, Some("max_image_pixels"));
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains(&format!("{w}×{h}")));
    let small = detris_io::image::rgb_png(&image::imageops::thumbnail(&photo, w / 2, h / 2)).unwrap();
    let small_px = u64::from(w / 2 * (h / 2));
    assert!(small_px <= limits.max_work_pixels && 2 * small_px > limits.max_work_pixels);
    let (ct, body) = multipart(&small, &["the cup"]);
    assert_eq!(ok(&post(addr, &ct, &body)).width, w as usize / 2);
    // Per side, before decoding.
    let long = detris_io::image::rgb_png(&Rgb::new(limits.max_image_side + 1, 8)).unwrap();
    let (ct, body) = multipart(&long, &["the cup"]);
    assert_error(&post(addr, &ct, &body), 413, Some("max_image_side"));
    // The work budget: the thumbnail passes with one sentence, not with two.
    let (ct, body) = multipart(&small, &["the cup", "the plate"]);
    let r = post(addr, &ct, &body);
    assert_error(&r, 413, Some("max_work_pixels"));
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("2 sentences"), "{}", r.text());
    // Too small a photo.
    let tiny = detris_io::image::rgb_png(&Rgb::new(4, 4)).unwrap();
    let (ct, body) = multipart(&tiny, &["the cup"]);
    assert_error(&post(addr, &ct, &body), 400, Some("min_image_side"));
    // Sentences: count (multipart and JSON), characters (not bytes).
    let (ct, body) = multipart(&small, &["a", "b", "c", "d"]);
    assert_error(&post(addr, &ct, &body), 400, Some("max_sentences"));
    let v = serde_json::json!({"image": B64.encode(&small), "texts": ["a", "b", "c", "d"]});
    assert_error(&post_json(addr, &v), 400, Some("max_sentences"));
    let huge = "x".repeat(limits.max_sentence_chars + 1);
    let (ct, body) = multipart(&small, &[&huge]);
    assert_error(&post(addr, &ct, &body), 400, Some("max_sentence_chars"));
    let wide = "é".repeat(limits.max_sentence_chars);
    let (ct, body) = multipart(&small, &[&wide]);
    ok(&post(addr, &ct, &body));
    // Over the word length: cut and flagged, as the CLI does.
    let word_len = tiny_config().word_len;
    let long_text = "cup ".repeat(word_len + 3);
    let want = ClipTokenizer::global().tokenize(&long_text, word_len).unwrap();
    assert!(want.truncated);
    let (ct, body) = multipart(&small, &[&long_text]);
    let r = ok(&post(addr, &ct, &body));
    assert!(r.results[0].truncated);
    assert_eq!(r.results[0].tokens, want.n_ids);
    running.stop().unwrap();

    // The answer's size: a server that answers at most a few bytes.
    let running = start(Limits { max_answer_bytes: 100, ..Limits::default() });
    let (ct, body) = multipart(&small, &["the cup"]);
    assert_error(&post(running.addr(), &ct, &body), 413, Some("max_answer_bytes"));
    running.stop().unwrap();
}

/// Uploads have their own bound, apart from the model queue: a slow upload
/// holds an upload place, not a model place.
#[test]
fn uploads_in_progress_are_bounded_apart_from_the_queue() {
    let running = start(Limits { max_uploads: 1, ..Limits::default() });
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup"]);

    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    slow.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    slow.write_all(&body[..1000]).unwrap();
    let h = wait_health(addr, |h| h["uploads"] == 1);
    assert_eq!(h["in_flight"], 0, "{h}");

    let r = post(addr, &ct, &body);
    assert_error(&r, 503, Some("max_uploads"));
    assert_eq!(r.header("retry-after"), Some("1"));

    slow.write_all(&body[1000..]).unwrap();
    let r = client::read_response(&mut slow).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&post(addr, &ct, &body));
    let h = wait_health(addr, |h| h["uploads"] == 0);
    assert_eq!(h["in_flight"], 0, "{h}");
    running.stop().unwrap();

    // Bytes held: a stalled upload counts with its Content-Length.
    let room = body.len() + 100;
    let running = start(Limits { max_body_bytes: room, max_buffered_bytes: room, ..Limits::default() });
    let addr = running.addr();
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    slow.write_all(&body[..1000]).unwrap();
    wait_health(addr, |h| h["uploads"] == 1);
    assert_error(&post(addr, &ct, &body), 503, Some("max_buffered_bytes"));
    slow.write_all(&body[1000..]).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(client::read_response(&mut slow).unwrap().status, 200);
    ok(&post(addr, &ct, &body));
    running.stop().unwrap();
}

/// Polls /healthz until `cond` holds (for at most a minute).
#[track_caller]
fn wait_health(addr: SocketAddr, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let h = client::get(addr, "/healthz").unwrap().json().unwrap();
        if cond(&h) {
            return h;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "healthz never got there: {h}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_requests_beyond_the_queue_get_503() {
    let running = start(Limits { queue: 2, ..Limits::default() });
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup", "the spoon"]);
    let n = 8;
    let barrier = Arc::new(Barrier::new(n));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let barrier = barrier.clone();
                let (ct, body) = (&ct, &body);
                s.spawn(move || {
                    barrier.wait();
                    let r = post(addr, ct, body);
                    if r.status == 503 {
                        assert_error(&r, 503, Some("queue"));
                        assert_eq!(r.header("retry-after"), Some("1"));
                    }
                    r.status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok_count = statuses.iter().filter(|&&s| s == 200).count();
    let busy = statuses.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok_count + busy, n, "{statuses:?}");
    assert!(ok_count >= 1 && busy >= 1, "{statuses:?}");
    running.stop().unwrap();
}

#[test]
fn slow_request_times_out_with_408() {
    let running = start(Limits { timeout: Seconds::from_millis(200), ..Limits::default() });
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    slow.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    slow.write_all(&body[..100]).unwrap();
    let r = client::read_response(&mut slow).unwrap();
    assert_error(&r, 408, Some("timeout_ms"));
    // Quick requests still pass.
    assert_eq!(client::get(addr, "/healthz").unwrap().status, 200);
    running.stop().unwrap();
}

/// Waits until the server closes `stream` (EOF or reset), writing `drip` one
/// byte at a time meanwhile (every 50 ms) when given; returns how long that took.
fn time_until_closed(stream: &mut TcpStream, drip: Option<&[u8]>, give_up: Duration) -> Duration {
    use std::io::Read;
    let t0 = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut next = drip.unwrap_or(&[]).iter();
    let mut buf = [0u8; 1024];
    loop {
        assert!(t0.elapsed() < give_up, "the server kept the connection open for {give_up:?}");
        if let Some(&b) = next.next() {
            if stream.write_all(&[b]).is_err() {
                return t0.elapsed();
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            // Whatever the server says first (hyper answers nothing to a timed-out header).
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return t0.elapsed(),
        }
    }
}

/// A header sent a byte at a time, and connections that send nothing (before
/// or after a request), are closed once their time is up, and not before.
#[test]
fn slow_headers_and_idle_connections_are_cut_off() {
    let (header, idle) = (Duration::from_millis(400), Duration::from_millis(600));
    let running = start(Limits { header_timeout: Seconds(header), idle_timeout: Seconds(idle), ..Limits::default() });
    let addr = running.addr();
    // Well under the request timeout (60 s): what closes them is these two limits.
    let give_up = Duration::from_secs(20);

    let head = client::head(addr, "GET", "/healthz", None, 0);
    let mut slow = TcpStream::connect(addr).unwrap();
    let took = time_until_closed(&mut slow, Some(&head[..head.len() - 2]), give_up);
    assert!(took >= header, "closed after {took:?}, before the header timeout");

    let mut silent = TcpStream::connect(addr).unwrap();
    let took = time_until_closed(&mut silent, None, give_up);
    assert!(took >= idle, "closed after {took:?}, before the idle timeout");

    // Keep-alive: a request answered, then nothing.
    let mut kept = TcpStream::connect(addr).unwrap();
    kept.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    let took = time_until_closed(&mut kept, None, give_up);
    assert!(took >= idle, "closed after {took:?}, before the idle timeout");
    assert_eq!(client::get(addr, "/healthz").unwrap().status, 200);
    running.stop().unwrap();
}

/// A body that stalls after the grace period gets 408 `min_upload_rate`,
/// long before the request timeout.
#[test]
fn slow_body_gets_408_after_the_grace_period() {
    let grace = Duration::from_millis(500);
    let running = start(Limits { upload_grace: Seconds(grace), min_upload_rate: 1000, ..Limits::default() });
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let t0 = Instant::now();
    slow.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    slow.write_all(&body[..10]).unwrap();
    let r = client::read_response(&mut slow).unwrap();
    let took = t0.elapsed();
    assert_error(&r, 408, Some("min_upload_rate"));
    assert!(took >= grace, "cut off after {took:?}, inside the grace period");
    assert!(took < *Limits::default().timeout / 2, "cut off after {took:?}");
    running.stop().unwrap();
}

/// With 300 idle connections and 16 stalled uploads open, a normal request
/// still gets its answer at once.
#[test]
fn idle_crowd_and_slow_uploads_do_not_lock_out_a_normal_request() {
    let running = start(Limits::default());
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let slow: Vec<TcpStream> = (0..16)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
            s.write_all(&body[..10]).unwrap();
            s
        })
        .collect();
    let h = wait_health(addr, |h| h["uploads"] == 16 && h["connections"].as_u64() >= Some(316));
    assert_eq!(h["in_flight"], 0, "uploads hold no model place: {h}");
    let t0 = Instant::now();
    let r = post(addr, &ct, &body);
    ok(&r);
    // Generous: the request itself takes well under a second here; the uploads
    // and idle connections would hold it for their timeouts (5 s grace, 30 s idle).
    assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
    drop((idle, slow));
    running.stop().unwrap();
}

/// One connection over the limit gets a 503 that names it, and is closed.
#[test]
fn connections_beyond_the_limit_are_refused_clearly() {
    let running = start(Limits { max_connections: 3, ..Limits::default() });
    let addr = running.addr();
    let mut held: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    // Connections are accepted in the order they were made: once the last one
    // is answered, the server holds all three.
    assert_eq!(keep_alive_get(&mut held[2], addr, "/healthz"), 200);
    let r = client::get(addr, "/healthz").unwrap();
    assert_error(&r, 503, Some("max_connections"));
    assert_eq!(r.header("retry-after"), Some("1"));
    drop(held);
    let t0 = Instant::now();
    while client::get(addr, "/healthz").unwrap().status != 200 {
        assert!(t0.elapsed() < Duration::from_secs(30), "the places never came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    running.stop().unwrap();
}

/// One keep-alive `GET path` on an open connection; returns the status.
fn keep_alive_get(stream: &mut TcpStream, addr: SocketAddr, path: &str) -> u16 {
    use std::io::Read;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut raw, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the answer: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap();
            if raw.len() >= end + 4 + len {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

/// A request abandoned while the worker runs it frees the worker within about
/// one sentence: the next request's queue time is a sentence's time, not the
/// rest of the abandoned request.
#[test]
fn abandoned_request_frees_the_worker() {
    // The model's pass over all sentences is one step that cannot stop half-way; on a machine
    // shared with other jobs, libtorch's OpenMP threads can make that step many times slower
    // (spinning against the other jobs). One thread keeps it proportional to the work, so that
    // the per-sentence post-processing below is what the worker spends its time on.
    tch::set_num_threads(1);
    let sentences = 40;
    let running = start(Limits {
        max_sentences: sentences,
        max_work_pixels: u64::MAX,
        max_answer_bytes: usize::MAX,
        max_body_bytes: 200 << 20,
        max_buffered_bytes: 400 << 20,
        max_image_pixels: detris_io::image::MAX_PIXELS,
        ..Limits::default()
    });
    let addr = running.addr();
    let texts: Vec<String> = (0..sentences).map(|i| format!("the cup number {i}")).collect();
    let refs: Vec<&str> = texts.iter().map(|s| s.as_str()).collect();
    // The model's pass over all sentences, timed on a thumbnail (the pass runs at the model's
    // input size, whatever the photo; the thumbnail's post-processing is negligible).
    let mut photo = detris_io::image::decode_rgb(&coffee(), "coffee.png").unwrap();
    let thumb = detris_io::image::rgb_png(&image::imageops::thumbnail(&photo, 32, 32)).unwrap();
    let (ct, body) = multipart(&thumb, &refs);
    // Times are the better of two runs: the first at a new size also sets up buffers.
    let twice = |ct: &str, body: &[u8], f: &dyn Fn(&SegmentResponse) -> f64| {
        f(&ok(&post(addr, ct, body))).min(f(&ok(&post(addr, ct, body))))
    };
    let pass_ms = twice(&ct, &body, &|r| r.timings_ms.inference);
    // The photo grows until one sentence's post-processing (back to the photo's size) takes at
    // least 100 ms and all of them at least 8 times the pass (in debug and release builds alike).
    let (mut png, mut sentence_ms);
    loop {
        png = detris_io::image::rgb_png(&photo).unwrap();
        let (ct1, body1) = multipart(&png, &["the cup"]);
        sentence_ms = twice(&ct1, &body1, &|r| r.results[0].timings_ms.postprocess);
        if (sentence_ms >= 100.0 && sentences as f64 * sentence_ms >= 8.0 * pass_ms) || photo.width() >= 8000 {
            break;
        }
        let (w, h) = photo.dimensions();
        photo = image::imageops::resize(&photo, w * 2, h * 2, image::imageops::FilterType::Triangle);
    }
    let (ct1, body1) = multipart(&png, &["the cup"]);
    let (ct, body) = multipart(&png, &refs);
    let mut abandoned = TcpStream::connect(addr).unwrap();
    abandoned.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    abandoned.write_all(&body).unwrap();
    let h = wait_health(addr, |h| h["worker"] == "busy");
    assert!(h["job_age_ms"].as_u64().is_some(), "{h}");
    // Mid-way: past the model's pass (with half of it again to spare), into the post-processing.
    std::thread::sleep(Duration::from_secs_f64((1.5 * pass_ms + 1.5 * sentence_ms) / 1e3));
    drop(abandoned);

    let next = ok(&post(addr, &ct1, &body1));
    let queue_ms = next.timings_ms.queue;
    // Without cancellation the wait is the rest of the sentences (over 30 sentence times);
    // with it, the sentence under way (or, dropped early, the rest of the pass: at most 5
    // sentence times). 8× leaves room for a loaded machine.
    assert!(
        queue_ms < 8.0 * sentence_ms,
        "the next request waited {queue_ms:.0} ms for the abandoned one; one sentence takes {sentence_ms:.0} ms \
         (the model's pass {pass_ms:.0} ms)"
    );
    let h = wait_health(addr, |h| h["worker"] == "idle");
    assert!(h["job_age_ms"].is_null(), "{h}");
    running.stop().unwrap();
}

/// The served description says this server's own limits.
#[test]
fn served_openapi_says_this_servers_limits() {
    let running = start(Limits { max_sentences: 5, max_sentence_chars: 300, ..Limits::default() });
    let o = client::get(running.addr(), "/openapi.json").unwrap().json().unwrap();
    let body = &o["paths"]["/v1/segment"]["post"]["requestBody"]["content"];
    assert_eq!(body["multipart/form-data"]["schema"]["properties"]["text"]["maxItems"], 5);
    assert_eq!(body["application/json"]["schema"]["properties"]["texts"]["maxItems"], 5);
    assert_eq!(o["components"]["schemas"]["Sentence"]["maxLength"], 300);
    running.stop().unwrap();
}

/// The binary: `detris serve --bind 127.0.0.1:0` announces its address, serves,
/// and logs one JSON line per request (method, path, status, latency).
#[test]
fn serve_binary_logs_one_line_per_request() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_detris"))
        .args(["serve", "--device", "cpu", "--bind", "127.0.0.1:0", "--checkpoint"])
        .arg(checkpoint())
        .arg("--config")
        .arg(config())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let addr: SocketAddr = first
        .split("http://")
        .nth(1)
        .and_then(|s| s.trim().trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no address in {first:?}"));
    assert_eq!(client::get(addr, "/healthz").unwrap().status, 200);
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    ok(&post(addr, &ct, &body));
    assert_eq!(client::get(addr, "/missing").unwrap().status, 404);
    child.kill().unwrap();
    child.wait().unwrap();
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(&l.unwrap()).expect("a JSON log line")).collect();
    let seen: Vec<(String, String, u64)> = lines
        .iter()
        .map(|l| {
            assert!(l["latency_ms"].as_f64().unwrap() >= 0.0);
            assert!(l["ts"].as_f64().unwrap() > 1.6e9);
            (l["method"].as_str().unwrap().into(), l["path"].as_str().unwrap().into(), l["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("GET".into(), "/healthz".into(), 200),
            ("POST".into(), "/v1/segment".into(), 200),
            ("GET".into(), "/missing".into(), 404)
        ]
    );
}

fn tempdir(tag: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("serve-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The README's limits table names every limit that error bodies quote and
/// every flag of the limits struct.
#[test]
fn readme_limits_table_lists_every_limit_and_flag() {
    use clap::Args;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: String = readme
        .split("## Web demo and JSON API")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| "))
        .collect::<Vec<_>>()
        .join("\n");
    let cmd = Limits::augment_args(clap::Command::new("serve"));
    let flags: Vec<String> = cmd.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("`--{l}`")).collect();
    assert!(flags.len() >= 16, "{flags:?}");
    for flag in &flags {
        assert!(table.contains(flag.as_str()), "the README's limits table lacks {flag}");
    }
    let openapi: serde_json::Value = serde_json::from_str(detris::serve::api::OPENAPI).unwrap();
    for limit in openapi["components"]["schemas"]["Error"]["properties"]["limit"]["enum"].as_array().unwrap() {
        let name = format!("`{}`", limit.as_str().unwrap());
        assert!(table.contains(&name), "the README's limits table lacks {name}");
    }
}
