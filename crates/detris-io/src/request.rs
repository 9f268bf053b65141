//! The body of `POST /v1/segment`, parsed and checked without the model, so
//! that the HTTP input path is fuzzed and tested like every other reader.
//!
//! ```text
//! content type + body bytes → multipart/form-data (`image` file, `text` fields)
//!                           | application/json ({"image": base64, "texts": [...]})
//!   → sentence limits (count, bytes, empty, tokens) → image header (pixel limit)
//!   → decoded photo (minimum side)
//! ```
//!
//! Every refusal is a [`Rejection`]: the HTTP status, a message that says what
//! to send instead, and the name of the limit that was hit, if one was.

use std::future::Future;
use std::io::Cursor;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use crate::image::{self, Rgb};
use crate::tokenizer::{check_sentence, ClipTokenizer, MAX_TEXT_BYTES};

/// Every limit of `detris serve`: one struct for the server, the request
/// parser and the command line (`detris serve --help` shows these comments).
/// Each limit has the name that error bodies quote (`{"error": "...",
/// "limit": "max_sentences"}`) and the status it answers with.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct Limits {
    /// Largest request body, bytes (413 `max_body_bytes`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_body_bytes))]
    pub max_body_bytes: usize,
    /// Largest photo, width × height pixels, read from its header before decoding (413 `max_image_pixels`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_image_pixels))]
    pub max_image_pixels: u64,
    /// Largest photo width or height, pixels, read from its header (413 `max_image_side`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_image_side))]
    pub max_image_side: u32,
    /// Work budget of one request: photo pixels × sentences (413 `max_work_pixels`). The model's
    /// post-processing and the PNG answers grow with it; the default keeps the worst accepted
    /// request to a few seconds of the worker (docs/bench/2026-12-02-serve-work-budget.md).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_work_pixels))]
    pub max_work_pixels: u64,
    /// Largest answer, bytes of base64 PNGs and RLE strings (413 `max_answer_bytes`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_answer_bytes))]
    pub max_answer_bytes: usize,
    /// Most sentences per request (400 `max_sentences`).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_sentences))]
    pub max_sentences: usize,
    /// Longest sentence, Unicode characters, as JSON Schema's maxLength counts them
    /// (400 `max_sentence_chars`). Longer than the model's word length in tokens: cut and
    /// flagged `truncated`, as `detris segment` does.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_sentence_chars))]
    pub max_sentence_chars: usize,
    /// Complete requests waiting for or running on the model (503 `queue` + Retry-After).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.queue))]
    pub queue: usize,
    /// Request bodies being uploaded at once (503 `max_uploads` + Retry-After).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_uploads))]
    pub max_uploads: usize,
    /// Bytes of request bodies held at once, uploading or being parsed; a body counts with its
    /// Content-Length, or max_body_bytes when it has none (503 `max_buffered_bytes` + Retry-After).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_buffered_bytes))]
    pub max_buffered_bytes: usize,
    /// Open connections; one more gets a 503 `max_connections` and is closed.
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.max_connections))]
    pub max_connections: usize,
    /// Seconds from a request's first byte to the end of its headers; slower: the connection is closed.
    #[cfg_attr(feature = "clap", arg(long = "header-timeout-secs", value_name = "SECS", default_value_t = DEFAULT.header_timeout))]
    pub header_timeout: Seconds,
    /// Seconds a connection may stay open with no request and nothing read or written; then it is closed.
    #[cfg_attr(feature = "clap", arg(long = "idle-timeout-secs", value_name = "SECS", default_value_t = DEFAULT.idle_timeout))]
    pub idle_timeout: Seconds,
    /// Slowest accepted upload, bytes per second, once the grace period is over: a body must have
    /// sent rate × (elapsed − grace) bytes at every moment (408 `min_upload_rate`; 0: no minimum).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = DEFAULT.min_upload_rate))]
    pub min_upload_rate: u64,
    /// Seconds of an upload before the minimum rate applies.
    #[cfg_attr(feature = "clap", arg(long = "upload-grace-secs", value_name = "SECS", default_value_t = DEFAULT.upload_grace))]
    pub upload_grace: Seconds,
    /// Seconds one request may take, upload included (408 `timeout_ms`); the model stops
    /// working on it at the next sentence.
    #[cfg_attr(feature = "clap", arg(long = "timeout-secs", value_name = "SECS", default_value_t = DEFAULT.timeout))]
    pub timeout: Seconds,
}

/// The defaults (also those of the command line).
pub const DEFAULT: Limits = Limits {
    max_body_bytes: 20 << 20,
    max_image_pixels: 25_000_000,
    max_image_side: image::MAX_SIDE,
    max_work_pixels: 25_000_000,
    max_answer_bytes: 128 << 20,
    max_sentences: 16,
    max_sentence_chars: 1024,
    queue: 16,
    max_uploads: 64,
    max_buffered_bytes: 256 << 20,
    max_connections: 512,
    header_timeout: Seconds::from_secs(10),
    idle_timeout: Seconds::from_secs(30),
    min_upload_rate: 16 << 10,
    upload_grace: Seconds::from_secs(5),
    timeout: Seconds::from_secs(60),
};

impl Default for Limits {
    fn default() -> Limits {
        DEFAULT
    }
}

impl Limits {
    /// Refuses limits the server cannot keep (each message names the flag).
    pub fn check(&self) -> Result<(), String> {
        let positive = [
            ("--queue", self.queue),
            ("--max-uploads", self.max_uploads),
            ("--max-connections", self.max_connections),
            ("--max-sentences", self.max_sentences),
            ("--max-sentence-chars", self.max_sentence_chars),
            ("--max-body-bytes", self.max_body_bytes),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if self.max_image_side > image::MAX_SIDE || self.max_image_pixels > image::MAX_PIXELS {
            return Err(format!(
                "--max-image-side and --max-image-pixels go up to {} and {} (what the decoder takes)",
                image::MAX_SIDE,
                image::MAX_PIXELS
            ));
        }
        // Every character is at most 4 UTF-8 bytes: the tokenizer's own bound must hold.
        if self.max_sentence_chars * 4 > MAX_TEXT_BYTES {
            return Err(format!("--max-sentence-chars goes up to {} (the tokenizer's bound)", MAX_TEXT_BYTES / 4));
        }
        if self.max_body_bytes > self.max_buffered_bytes || self.max_body_bytes > u32::MAX as usize {
            return Err("--max-body-bytes must be at most --max-buffered-bytes and under 4 GiB".into());
        }
        for (flag, s) in [
            ("--header-timeout-secs", self.header_timeout),
            ("--idle-timeout-secs", self.idle_timeout),
            ("--timeout-secs", self.timeout),
        ] {
            if s.is_zero() {
                return Err(format!("{flag} must be positive"));
            }
        }
        Ok(())
    }
}

/// A duration given in seconds on the command line (`0.5`, `60`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl Seconds {
    pub const fn from_secs(s: u64) -> Seconds {
        Seconds(Duration::from_secs(s))
    }
    pub const fn from_millis(ms: u64) -> Seconds {
        Seconds(Duration::from_millis(ms))
    }
}

impl std::ops::Deref for Seconds {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

impl std::str::FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Seconds, String> {
        match s.trim().parse::<f64>() {
            Ok(v) if v >= 0.0 && v.is_finite() && v < 1e9 => Ok(Seconds(Duration::from_secs_f64(v))),
            _ => Err(format!("`{s}` is not a number of seconds (e.g. 0.5 or 60)")),
        }
    }
}

/// A refused request: `{"error": "...", "limit": "..."}` with this status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub error: String,
    /// The limit's name, when a limit was hit.
    pub limit: Option<&'static str>,
}

impl Rejection {
    fn bad(error: impl Into<String>) -> Rejection {
        Rejection { status: 400, error: error.into(), limit: None }
    }
    fn limit(status: u16, limit: &'static str, error: impl Into<String>) -> Rejection {
        Rejection { status, error: error.into(), limit: Some(limit) }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.error, self.status)
    }
}

impl std::error::Error for Rejection {}

/// An accepted request.
#[derive(Debug)]
pub struct SegmentRequest {
    pub photo: Rgb,
    pub texts: Vec<String>,
    /// Each sentence's CLIP token count (SOT and EOT included) before the cut to the word length.
    pub token_counts: Vec<usize>,
}

/// The JSON form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SegmentJson {
    /// The photo's bytes in base64 (a `data:image/...;base64,` prefix is allowed).
    image: String,
    texts: Vec<String>,
}

/// Parses and checks one request body. `content_type` is the header's value
/// (empty when absent); `word_len` is the model's. The body is taken as
/// `Bytes` (a `Vec<u8>` converts) so that the server's buffer is not copied.
pub fn parse_segment_request(
    content_type: &str,
    body: impl Into<Bytes>,
    limits: &Limits,
    word_len: usize,
) -> Result<SegmentRequest, Rejection> {
    let (ctype, body) = (content_type.to_ascii_lowercase(), body.into());
    let (image, texts) = if ctype.starts_with("multipart/form-data") {
        parse_multipart(content_type, body, limits.max_sentences)?
    } else if ctype.starts_with("application/json") {
        parse_json(&body)?
    } else {
        return Err(Rejection {
            status: 415,
            error: format!(
                "content type `{ctype}`: send multipart/form-data (an `image` file and `text` fields) or application/json ({{\"image\": base64, \"texts\": [...]}})"
            ),
            limit: None,
        });
    };
    let (name, image_bytes) =
        image.ok_or_else(|| Rejection::bad("no image: send the photo as the `image` field (JPEG, PNG or WebP)"))?;
    let token_counts = check_texts(&texts, limits, word_len)?;
    let photo = decode_photo(&image_bytes, &name, limits, texts.len())?;
    Ok(SegmentRequest { photo, texts, token_counts })
}

/// The size limits from the header, before any pixel is decoded: per side, in
/// all, and pixels × sentences; then the decoded photo, at least
/// [`image::MIN_SIDE`] on each side.
fn decode_photo(bytes: &[u8], name: &str, lim: &Limits, sentences: usize) -> Result<Rgb, Rejection> {
    let dims =
        ::image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok().and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = dims {
        if w.max(h) > lim.max_image_side {
            return Err(Rejection::limit(
                413,
                "max_image_side",
                format!("the image is {w}×{h}; this server takes at most {} pixels per side", lim.max_image_side),
            ));
        }
        let pixels = u64::from(w) * u64::from(h);
        if pixels > lim.max_image_pixels {
            return Err(Rejection::limit(
                413,
                "max_image_pixels",
                format!("the image is {w}×{h} = {pixels} pixels; this server takes at most {}", lim.max_image_pixels),
            ));
        }
        let work = pixels.saturating_mul(sentences as u64);
        if work > lim.max_work_pixels {
            return Err(Rejection::limit(
                413,
                "max_work_pixels",
                format!(
                    "{pixels} pixels × {sentences} sentences = {work}; this server takes at most {} per request: \
                     send fewer sentences or a smaller photo",
                    lim.max_work_pixels
                ),
            ));
        }
    }
    let photo = image::decode_rgb(bytes, name).map_err(|e| Rejection::bad(e.to_string()))?;
    image::check_min_side(&photo).map_err(|e| Rejection::limit(400, "min_image_side", e.to_string()))?;
    Ok(photo)
}

type Parsed = (Option<(String, Bytes)>, Vec<String>);

/// Fields `image` (one file) and `text` (one per sentence).
fn parse_multipart(content_type: &str, body: Bytes, max_sentences: usize) -> Result<Parsed, Rejection> {
    let malformed = |e: multer::Error| Rejection::bad(format!("malformed multipart body: {e}"));
    let boundary = multer::parse_boundary(content_type).map_err(malformed)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, std::convert::Infallible>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let (mut image, mut texts) = (None, Vec::new());
    while let Some(field) = ready(form.next_field()).map_err(malformed)? {
        match field.name() {
            Some("image") => {
                if image.is_some() {
                    return Err(Rejection::bad("more than one `image` field: send one photo per request"));
                }
                let name = field.file_name().unwrap_or("image").to_string();
                image = Some((name, ready(field.bytes()).map_err(malformed)?));
            }
            Some("text") => {
                if texts.len() == max_sentences {
                    return Err(too_many_sentences(max_sentences));
                }
                let text = ready(field.text()).map_err(|e| Rejection::bad(format!("`text` field: {e}")))?;
                texts.push(text);
            }
            other => {
                return Err(Rejection::bad(format!(
                    "unknown form field {:?}: send `image` (the photo) and one `text` per sentence",
                    other.unwrap_or("")
                )))
            }
        }
    }
    Ok((image, texts))
}

/// Runs a future over an in-memory body to completion. The body is one chunk
/// that is already there, so the parser never waits; a future that did wait
/// would be a bug in this module, not a slow client.
fn ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn parse_json(body: &[u8]) -> Result<Parsed, Rejection> {
    let req: SegmentJson = serde_json::from_slice(body).map_err(|e| {
        Rejection::bad(format!(
            "invalid JSON body ({e}): send {{\"image\": \"<base64 JPEG/PNG/WebP>\", \"texts\": [\"...\"]}}"
        ))
    })?;
    let b64 = req.image.trim();
    let b64 = match b64.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map(|(_, data)| data).unwrap_or(""),
        None => b64,
    };
    let image = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| Rejection::bad(format!("`image` is not valid base64: {e}")))?;
    Ok((Some(("image".into(), Bytes::from(image))), req.texts))
}

fn too_many_sentences(max: usize) -> Rejection {
    Rejection::limit(400, "max_sentences", format!("more than {max} sentences in one request"))
}

/// The sentence limits; returns each sentence's token count.
fn check_texts(texts: &[String], lim: &Limits, word_len: usize) -> Result<Vec<usize>, Rejection> {
    if texts.is_empty() {
        return Err(Rejection::bad("no sentence: send one `text` field (or `texts` entry) per object to segment"));
    }
    if texts.len() > lim.max_sentences {
        return Err(too_many_sentences(lim.max_sentences));
    }
    let mut counts = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let n = i + 1;
        let chars = t.chars().count();
        if chars > lim.max_sentence_chars {
            return Err(Rejection::limit(
                400,
                "max_sentence_chars",
                format!("sentence {n} is {chars} characters long; the limit is {}", lim.max_sentence_chars),
            ));
        }
        check_sentence(t).map_err(|e| Rejection::bad(format!("sentence {n}: {e}")))?;
        let tokens =
            ClipTokenizer::global().tokenize(t, word_len).map_err(|e| Rejection::bad(format!("sentence {n}: {e}")))?;
        counts.push(tokens.n_ids);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_image_pixels: 1 << 20,
            max_image_side: 1500,
            max_work_pixels: 1_500_000,
            max_sentences: 2,
            max_sentence_chars: 64,
            ..Limits::default()
        }
    }

    fn png(w: u32, h: u32) -> Vec<u8> {
        image::rgb_png(&Rgb::from_pixel(w, h, ::image::Rgb([10, 200, 30]))).unwrap()
    }

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend_from_slice(b"--XyZ\r\n");
            let file = file.map(|f| format!("; filename=\"{f}\"")).unwrap_or_default();
            body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes());
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--XyZ--\r\n");
        ("multipart/form-data; boundary=XyZ".into(), body)
    }

    #[test]
    fn multipart_and_json_give_the_same_request() {
        let img = png(20, 12);
        let (ct, body) = form(&[("image", Some("a.png"), &img), ("text", None, b"the cup"), ("text", None, b"a dog")]);
        let a = parse_segment_request(&ct, body.clone(), &limits(), 17).unwrap();
        assert_eq!(a.texts, ["the cup", "a dog"]);
        assert_eq!(a.token_counts, [4, 4]);
        assert_eq!(a.photo.dimensions(), (20, 12));
        let b64 = base64::engine::general_purpose::STANDARD.encode(&img);
        let json = format!(r#"{{"image": "data:image/png;base64,{b64}", "texts": ["the cup", "a dog"]}}"#);
        let b = parse_segment_request("application/json; charset=utf-8", json.into_bytes(), &limits(), 17).unwrap();
        assert_eq!(b.texts, a.texts);
        assert_eq!(b.photo, a.photo);
    }

    #[test]
    fn refusals_name_the_problem_and_the_limit() {
        let img = png(20, 12);
        let lim = limits();
        let check = |ct: &str, body: &[u8], status: u16, limit: Option<&str>, needle: &str| {
            let r = parse_segment_request(ct, body.to_vec(), &lim, 17).unwrap_err();
            assert_eq!((r.status, r.limit), (status, limit), "{r}");
            assert!(r.error.contains(needle), "`{}` lacks `{needle}`", r.error);
        };
        check("text/plain", b"hi", 415, None, "multipart/form-data");
        check("multipart/form-data", b"x", 400, None, "malformed multipart");
        check("multipart/form-data; boundary=XyZ", b"not a form", 400, None, "malformed multipart");
        check("application/json", b"{\"image\": 3}", 400, None, "invalid JSON");
        check("application/json", b"{\"image\": \"@@\", \"texts\": [\"a\"]}", 400, None, "base64");
        let (ct, body) = form(&[("text", None, b"the cup")]);
        check(&ct, &body, 400, None, "no image");
        let (ct, body) = form(&[("image", Some("a.png"), &img)]);
        check(&ct, &body, 400, None, "no sentence");
        let (ct, body) = form(&[("image", Some("a.png"), &img), ("image", Some("b.png"), &img)]);
        check(&ct, &body, 400, None, "more than one `image`");
        let (ct, body) = form(&[("image", Some("a.png"), &img), ("color", None, b"red")]);
        check(&ct, &body, 400, None, "unknown form field \"color\"");
        let (ct, body) = form(&[("image", Some("a.png"), &img), ("text", None, b"  \n")]);
        check(&ct, &body, 400, None, "sentence 1: empty sentence");
        let (ct, body) =
            form(&[("image", None, &img), ("text", None, b"a"), ("text", None, b"b"), ("text", None, b"c")]);
        check(&ct, &body, 400, Some("max_sentences"), "more than 2");
        let long = "x".repeat(65);
        let (ct, body) = form(&[("image", None, &img), ("text", None, long.as_bytes())]);
        check(&ct, &body, 400, Some("max_sentence_chars"), "65 characters");
        // Characters, not bytes: 64 three-byte characters pass.
        let wide = "é".repeat(64);
        let (ct, body) = form(&[("image", None, &img), ("text", None, wide.as_bytes())]);
        assert!(parse_segment_request(&ct, body, &lim, 17).is_ok());
        let (ct, body) = form(&[("image", None, &png(2000, 100)), ("text", None, b"a")]);
        check(&ct, &body, 413, Some("max_image_side"), "2000×100");
        let (ct, body) = form(&[("image", None, &png(1100, 1000)), ("text", None, b"a")]);
        check(&ct, &body, 413, Some("max_image_pixels"), "1100×1000");
        // 1000 × 1000 pixels pass alone, but not twice: the work budget is pixels × sentences.
        let (ct, body) = form(&[("image", None, &png(1000, 1000)), ("text", None, b"a")]);
        assert!(parse_segment_request(&ct, body, &lim, 17).is_ok());
        let (ct, body) = form(&[("image", None, &png(1000, 1000)), ("text", None, b"a"), ("text", None, b"b")]);
        check(&ct, &body, 413, Some("max_work_pixels"), "1000000 pixels × 2 sentences");
        let (ct, body) = form(&[("image", None, &png(7, 30)), ("text", None, b"a")]);
        check(&ct, &body, 400, Some("min_image_side"), "7×30");
        let (ct, body) = form(&[("image", Some("cut.png"), &img[..img.len() / 2]), ("text", None, b"a")]);
        check(&ct, &body, 400, None, "cut.png");
    }

    #[test]
    fn limits_that_cannot_hold_are_refused_naming_the_flag() {
        assert_eq!(DEFAULT.check(), Ok(()));
        let bad = |l: Limits, flag: &str| {
            let e = l.check().unwrap_err();
            assert!(e.contains(flag), "`{e}` lacks {flag}");
        };
        bad(Limits { queue: 0, ..DEFAULT }, "--queue");
        bad(Limits { max_image_side: image::MAX_SIDE + 1, ..DEFAULT }, "--max-image-side");
        bad(Limits { max_sentence_chars: MAX_TEXT_BYTES / 4 + 1, ..DEFAULT }, "--max-sentence-chars");
        bad(Limits { max_buffered_bytes: DEFAULT.max_body_bytes - 1, ..DEFAULT }, "--max-body-bytes");
        bad(Limits { idle_timeout: Seconds::from_secs(0), ..DEFAULT }, "--idle-timeout-secs");
        assert_eq!("0.25".parse::<Seconds>(), Ok(Seconds::from_millis(250)));
        assert_eq!(Seconds::from_millis(1500).to_string(), "1.5");
        for nonsense in ["-1", "abc", "inf", "NaN", ""] {
            assert!(nonsense.parse::<Seconds>().is_err(), "{nonsense}");
        }
    }
}
