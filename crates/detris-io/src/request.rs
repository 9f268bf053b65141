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

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;

use crate::image::{self, Rgb};
use crate::tokenizer::{check_sentence, ClipTokenizer};

/// What one request may hold. Each limit has the name that error bodies quote.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    /// `max_image_pixels`: width × height, read from the header before decoding (413).
    pub max_image_pixels: u64,
    /// `max_sentences`: sentences per request (400).
    pub max_sentences: usize,
    /// `max_sentence_bytes`: UTF-8 bytes per sentence (400).
    pub max_sentence_bytes: usize,
    /// `max_sentence_tokens`: CLIP tokens per sentence, SOT and EOT included (400).
    pub max_sentence_tokens: usize,
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
    limits: &RequestLimits,
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
    let photo = decode_photo(&image_bytes, &name, limits.max_image_pixels)?;
    Ok(SegmentRequest { photo, texts, token_counts })
}

/// The pixel limit from the header, before any pixel is decoded; then the
/// decoded photo, at least [`image::MIN_SIDE`] on each side.
fn decode_photo(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Rgb, Rejection> {
    let dims =
        ::image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().ok().and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = dims {
        let pixels = u64::from(w) * u64::from(h);
        if pixels > max_pixels {
            return Err(Rejection::limit(
                413,
                "max_image_pixels",
                format!("the image is {w}×{h} = {pixels} pixels; this server takes at most {max_pixels}"),
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
fn check_texts(texts: &[String], lim: &RequestLimits, word_len: usize) -> Result<Vec<usize>, Rejection> {
    if texts.is_empty() {
        return Err(Rejection::bad("no sentence: send one `text` field (or `texts` entry) per object to segment"));
    }
    if texts.len() > lim.max_sentences {
        return Err(too_many_sentences(lim.max_sentences));
    }
    let mut counts = Vec::with_capacity(texts.len());
    for (i, t) in texts.iter().enumerate() {
        let n = i + 1;
        if t.len() > lim.max_sentence_bytes {
            return Err(Rejection::limit(
                400,
                "max_sentence_bytes",
                format!("sentence {n} is {} bytes long; the limit is {}", t.len(), lim.max_sentence_bytes),
            ));
        }
        check_sentence(t).map_err(|e| Rejection::bad(format!("sentence {n}: {e}")))?;
        let tokens =
            ClipTokenizer::global().tokenize(t, word_len).map_err(|e| Rejection::bad(format!("sentence {n}: {e}")))?;
        if tokens.n_ids > lim.max_sentence_tokens {
            return Err(Rejection::limit(
                400,
                "max_sentence_tokens",
                format!("sentence {n} has {} tokens; the limit is {}", tokens.n_ids, lim.max_sentence_tokens),
            ));
        }
        counts.push(tokens.n_ids);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits { max_image_pixels: 1 << 20, max_sentences: 2, max_sentence_bytes: 64, max_sentence_tokens: 20 }
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
        check(&ct, &body, 400, Some("max_sentence_bytes"), "65 bytes");
        let (ct, body) = form(&[("image", None, &img), ("text", None, "a ".repeat(30).as_bytes())]);
        check(&ct, &body, 400, Some("max_sentence_tokens"), "32 tokens");
        let (ct, body) = form(&[("image", None, &png(2000, 1000)), ("text", None, b"a")]);
        check(&ct, &body, 413, Some("max_image_pixels"), "2000×1000");
        let (ct, body) = form(&[("image", None, &png(7, 30)), ("text", None, b"a")]);
        check(&ct, &body, 400, Some("min_image_side"), "7×30");
        let (ct, body) = form(&[("image", Some("cut.png"), &img[..img.len() / 2]), ("text", None, b"a")]);
        check(&ct, &body, 400, None, "cut.png");
    }
}
