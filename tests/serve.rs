//! `detris serve` end to end over loopback: every endpoint, every limit, malformed
//! input, the bounded queue, the timeout, the log lines, and masks identical to
//! `Segmenter::segment` and to `detris segment` on the same input.
//! The tiny fixture model (`../shared/fixtures/tiny`) stands in for a real one.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::Duration;

use base64::Engine;
use detris::segment::Segmenter;
use detris::serve::api::{rle_encode, SegmentResponse};
use detris::serve::client::{self, Form};
use detris::serve::{self, Limits, ServeOptions};
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris::Detris;
use detris_io::data::coco_mask::Rle;
use detris_io::fixtures;
use detris_io::image::Rgb;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn checkpoint() -> PathBuf {
    fixtures::path("tiny/detris_ckpt.pth")
}
fn config() -> PathBuf {
    fixtures::path("tiny/config.json")
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

    let m = client::get(addr, "/v1/model").unwrap().json().unwrap();
    assert_eq!(m["input_size"], 112);
    assert_eq!(m["word_len"], 17);
    assert_eq!(m["device"], "cpu");
    assert_eq!(m["post"], "test");
    assert_eq!(m["dims"]["dino_dim"], 96);
    assert_eq!(m["dims"]["txt_width"], 128);
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
        "max_sentences",
        "max_sentence_bytes",
        "max_sentence_tokens",
        "queue",
        "timeout_ms",
    ] {
        assert!(limits.contains(&l), "openapi.json does not name the limit {l}");
    }

    assert_error(&client::get(addr, "/nope").unwrap(), 404, None);
    assert_error(&client::get(addr, "/v1/segment").unwrap(), 405, None);
    assert_error(&client::request(addr, "DELETE", "/healthz", None, &[]).unwrap(), 405, None);
}

/// The server's masks are `Segmenter::segment`'s, bit for bit, as PNG and as RLE.
#[test]
fn multipart_masks_equal_segmenter() {
    let bytes = coffee();
    let texts = [
        "the cup on the table",
        "the spoon",
        "a very long referring expression about the small striped cup sitting next to the big red plate on the right",
    ];
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
    assert!(!resp.results[0].truncated && resp.results[2].truncated);
    assert!(resp.results[2].tokens > 17 && resp.results[0].tokens <= 17);
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
        max_sentences: 3,
        max_sentence_bytes: 200,
        max_sentence_tokens: 30,
        ..Limits::default()
    };
    let running = start(limits);
    let addr = running.addr();
    // Body size: astronaut.png is 790 KB (and also over the pixel limit: the body is checked first).
    let big = std::fs::read(fixtures::images_dir().join("astronaut.png")).unwrap();
    let (ct, body) = multipart(&big, &["the person"]);
    assert_error(&post(addr, &ct, &body), 413, Some("max_body_bytes"));
    assert_error(
        &post_json(addr, &serde_json::json!({"image": B64.encode(&big), "texts": ["a"]})),
        413,
        Some("max_body_bytes"),
    );
    // Pixels: coffee.png is 600×400 = 240,000 pixels; a small one passes.
    let (ct, body) = multipart(&coffee(), &["the cup"]);
    let r = post(addr, &ct, &body);
    assert_error(&r, 413, Some("max_image_pixels"));
    assert!(r.json().unwrap()["error"].as_str().unwrap().contains("600×400"));
    let small = detris_io::image::rgb_png(&image::imageops::thumbnail(
        &detris_io::image::decode_rgb(&coffee(), "c").unwrap(),
        300,
        200,
    ))
    .unwrap();
    let (ct, body) = multipart(&small, &["the cup"]);
    assert_eq!(ok(&post(addr, &ct, &body)).width, 300);
    // Too small a photo.
    let tiny = detris_io::image::rgb_png(&Rgb::new(4, 4)).unwrap();
    let (ct, body) = multipart(&tiny, &["the cup"]);
    assert_error(&post(addr, &ct, &body), 400, Some("min_image_side"));
    // Sentences: count (multipart and JSON), bytes, tokens.
    let (ct, body) = multipart(&small, &["a", "b", "c", "d"]);
    assert_error(&post(addr, &ct, &body), 400, Some("max_sentences"));
    let v = serde_json::json!({"image": B64.encode(&small), "texts": ["a", "b", "c", "d"]});
    assert_error(&post_json(addr, &v), 400, Some("max_sentences"));
    let huge = "the cup ".repeat(100);
    let (ct, body) = multipart(&small, &[&huge]);
    assert_error(&post(addr, &ct, &body), 400, Some("max_sentence_bytes"));
    let many_tokens = "cup ".repeat(40); // 160 bytes, 42 tokens
    let (ct, body) = multipart(&small, &[&many_tokens]);
    assert_error(&post(addr, &ct, &body), 400, Some("max_sentence_tokens"));
    // Within the token limit but over the word length: cut and flagged, as the CLI does.
    let long = "cup ".repeat(20);
    let (ct, body) = multipart(&small, &[&long]);
    let r = ok(&post(addr, &ct, &body));
    assert!(r.results[0].truncated);
    assert_eq!(r.results[0].tokens, 22);
    running.stop().unwrap();
}

/// Requests beyond the queue get 503 + Retry-After at once, and the queue
/// frees up again: a slow upload holds its place, a second request is refused.
#[test]
fn full_queue_answers_503_with_retry_after() {
    let running = start(Limits { queue: 1, ..Limits::default() });
    let addr = running.addr();
    let (ct, body) = multipart(&coffee(), &["the cup"]);

    let mut slow = TcpStream::connect(addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    slow.write_all(&client::head(addr, "POST", "/v1/segment", Some(&ct), body.len())).unwrap();
    slow.write_all(&body[..1000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let r = post(addr, &ct, &body);
    assert_error(&r, 503, Some("queue"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(client::get(addr, "/healthz").unwrap().json().unwrap()["in_flight"], 1);

    slow.write_all(&body[1000..]).unwrap();
    let r = client::read_response(&mut slow).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    ok(&post(addr, &ct, &body));
    assert_eq!(client::get(addr, "/healthz").unwrap().json().unwrap()["in_flight"], 0);
    running.stop().unwrap();
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
    let running = start(Limits { timeout: Duration::from_millis(200), ..Limits::default() });
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
