//! The routes: `GET /`, `POST /v1/segment`, `GET /v1/model`, `GET /healthz`,
//! `GET /openapi.json`; errors as `{"error": "...", "limit": "..."}`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use detris_io::image::Rgb;
use detris_io::request::{Limits, Rejection};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use super::{AppState, Cancel, Job};
use crate::segment::{Cancelled, SentenceMask, SentenceTimings};

/// The page: one file, inline CSS and JS, no external assets.
pub const PAGE: &str = include_str!("page.html");
/// The OpenAPI 3 description of this API, for the default limits.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// [`OPENAPI`] with the sentence limits of this server (the schema's numbers).
pub fn openapi(limits: &Limits) -> anyhow::Result<String> {
    let mut doc: serde_json::Value = serde_json::from_str(OPENAPI)?;
    let content = &mut doc["paths"]["/v1/segment"]["post"]["requestBody"]["content"];
    for (ct, field) in [("multipart/form-data", "text"), ("application/json", "texts")] {
        let list = &mut content[ct]["schema"]["properties"][field];
        anyhow::ensure!(list.is_object(), "openapi.json lacks {ct} `{field}`");
        list["maxItems"] = json!(limits.max_sentences);
    }
    let sentence = &mut doc["components"]["schemas"]["Sentence"];
    anyhow::ensure!(sentence.is_object(), "openapi.json lacks the Sentence schema");
    sentence["maxLength"] = json!(limits.max_sentence_chars);
    Ok(serde_json::to_string_pretty(&doc)?)
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn router(state: Arc<AppState>) -> anyhow::Result<Router> {
    let timeout = *state.limits.timeout;
    let body_limit = state.limits.max_body_bytes;
    let openapi = openapi(&state.limits)?;
    Ok(Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], openapi) }))
        .route("/v1/segment", post(segment))
        .fallback(|uri: Uri| async move { ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {uri}")) })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(timeout, log_and_timeout))
        .with_state(state))
}

/// A 4xx/5xx answer: `{"error": "...", "limit": "..."}` (`limit` only when a limit was hit).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub limit: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), limit: None }
    }
    fn bad(error: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error)
    }
    fn limit(status: StatusCode, limit: &'static str, error: impl Into<String>) -> ApiError {
        ApiError { status, error: error.into(), limit: Some(limit) }
    }
    fn internal(error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> ApiError {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
        ApiError { status, error: r.error, limit: r.limit }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(l) = self.limit {
            body["limit"] = json!(l);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// The request timeout, and one JSON log line per request on stderr.
async fn log_and_timeout(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::limit(
            StatusCode::REQUEST_TIMEOUT,
            "timeout_ms",
            format!("the request took longer than the server's {} ms", timeout.as_millis()),
        )
        .into_response(),
    };
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    // One line per request, fields in a fixed order.
    let line = format!(
        r#"{{"ts":{ts:.3},"method":"{method}","path":{},"status":{},"latency_ms":{ms:.2}}}"#,
        serde_json::Value::from(path),
        resp.status().as_u16()
    );
    eprintln!("{line}");
    resp
}

async fn healthz(State(st): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let lim = &st.limits;
    let running = st.worker.running_since();
    Json(json!({
        "status": "ok",
        "uptime_s": st.started.elapsed().as_secs(),
        "worker": if running.is_some() { "busy" } else { "idle" },
        "job_age_ms": running.map(|t| (t.elapsed().as_secs_f64() * 1e3).round() as u64),
        "in_flight": lim.queue - st.queue.available_permits(),
        "queue": lim.queue,
        "uploads": lim.max_uploads - st.uploads.available_permits(),
        "max_uploads": lim.max_uploads,
        "connections": lim.max_connections - st.connections.available_permits(),
        "max_connections": lim.max_connections,
    }))
}

async fn model(State(st): State<Arc<AppState>>) -> Json<super::ModelInfo> {
    Json(st.info.clone())
}

/// The answer of `POST /v1/segment`.
#[derive(Serialize, Deserialize, Debug)]
pub struct SegmentResponse {
    pub model: String,
    pub width: usize,
    pub height: usize,
    pub timings_ms: RequestTimings,
    pub results: Vec<SentenceAnswer>,
}

/// Milliseconds spent on the request, by stage.
#[derive(Serialize, Deserialize, Debug)]
pub struct RequestTimings {
    /// Reading and parsing the body, checking the sentences, decoding the photo.
    pub decode: f64,
    /// Waiting for the worker.
    pub queue: f64,
    /// The model and its post-processing, all sentences.
    pub inference: f64,
    /// Mask and overlay PNGs, RLE.
    pub encode: f64,
    pub total: f64,
}

/// One sentence of the answer: its mask as PNGs and RLE, and what the user should know.
#[derive(Serialize, Deserialize, Debug)]
pub struct SentenceAnswer {
    pub sentence: String,
    /// Foreground pixels.
    pub area: usize,
    /// `area` / (width × height).
    pub area_fraction: f64,
    /// Mean foreground probability (0 for an empty mask).
    pub mean_probability: f32,
    /// CLIP tokens of the sentence, SOT and EOT included, before the cut to the word length.
    pub tokens: usize,
    /// True when the sentence had more tokens than the model's word length and was cut.
    pub truncated: bool,
    /// The padded ids the model saw.
    pub token_ids: Vec<i64>,
    /// What the user should know: the sentence was cut (and to what), or it uses words the
    /// model never saw.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub timings_ms: SentenceTimings,
    /// The mask, PNG (8-bit grey, 0/255, the photo's size), base64.
    pub mask_png: String,
    /// The photo with the mask tinted and outlined, PNG, base64.
    pub overlay_png: String,
    /// COCO RLE as pycocotools `mask.encode` + the compressed counts string.
    pub rle: RleJson,
}

pub use crate::mask_formats::{rle_encode, RleJson};

fn busy(limit: &'static str, what: String) -> ApiError {
    ApiError::limit(StatusCode::SERVICE_UNAVAILABLE, limit, format!("the server is busy ({what}); retry in a moment"))
}

fn timed_out(lim: &Limits) -> ApiError {
    ApiError::limit(
        StatusCode::REQUEST_TIMEOUT,
        "timeout_ms",
        format!("the request took longer than the server's {} ms", lim.timeout.as_millis()),
    )
}

async fn segment(State(st): State<Arc<AppState>>, req: Request) -> Result<Json<SegmentResponse>, ApiError> {
    let t0 = Instant::now();
    let lim = &st.limits;
    // Dropped with this future (request timeout, client gone): the worker then stops.
    let (cancel, _gone_on_drop) = Cancel::new(t0 + *lim.timeout);
    let queue_full = || busy("queue", format!("{} requests waiting for or running on the model", lim.queue));
    // A full model queue answers at once, before any body is read.
    if st.queue.available_permits() == 0 {
        return Err(queue_full());
    }
    let too_big = || {
        ApiError::limit(
            StatusCode::PAYLOAD_TOO_LARGE,
            "max_body_bytes",
            format!("the request body is larger than {} bytes", lim.max_body_bytes),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > lim.max_body_bytes as u64) {
        return Err(too_big());
    }
    let upload = st
        .uploads
        .try_acquire()
        .map_err(|_| busy("max_uploads", format!("{} uploads in progress", lim.max_uploads)))?;
    let reserve = declared.map_or(lim.max_body_bytes, |n| n as usize).max(1) as u32;
    let buffered = st.buffered.try_acquire_many(reserve).map_err(|_| {
        busy("max_buffered_bytes", format!("{} bytes of uploads held, the most it holds", lim.max_buffered_bytes))
    })?;
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let bytes = read_body(req.into_body(), lim, declared).await?;
    drop(upload);
    // Parsing, the sentence limits and decoding are CPU work: off the async threads.
    let (limits, word_len) = (lim.clone(), st.info.word_len);
    let request = tokio::task::spawn_blocking(move || {
        detris_io::request::parse_segment_request(&ctype, bytes, &limits, word_len)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::from)?;
    drop(buffered);
    let (photo, texts, token_counts) = (request.photo, request.texts, request.token_counts);
    let (w, h) = photo.dimensions();
    let photo = Arc::new(photo);
    let t1 = Instant::now();

    let place = st.queue.try_acquire().map_err(|_| queue_full())?;
    let (tx, rx) = oneshot::channel();
    let job = Job { photo: photo.clone(), sentences: texts, cancel: cancel.clone(), reply: tx };
    st.jobs.try_send(job).map_err(|e| match e {
        std::sync::mpsc::TrySendError::Full(_) => queue_full(),
        std::sync::mpsc::TrySendError::Disconnected(_) => ApiError::internal("the model worker has stopped"),
    })?;
    let (started, result) = rx.await.map_err(|_| ApiError::internal("the model worker has stopped"))?;
    drop(place);
    let masks = result.map_err(|e| match e.downcast_ref::<Cancelled>() {
        Some(_) => timed_out(lim),
        None => ApiError::internal(format!("{e:#}")),
    })?;
    let t2 = Instant::now();

    let max_answer = lim.max_answer_bytes;
    let results = tokio::task::spawn_blocking(move || encode(&photo, &masks, &token_counts, &cancel, max_answer))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            Encode::Cancelled => timed_out(lim),
            Encode::TooBig(at) => ApiError::limit(
                StatusCode::PAYLOAD_TOO_LARGE,
                "max_answer_bytes",
                format!(
                    "the answer passed {max_answer} bytes at sentence {at}: send fewer sentences or a smaller photo"
                ),
            ),
            Encode::Failed(e) => ApiError::internal(format!("{e:#}")),
        })?;
    let t3 = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Json(SegmentResponse {
        model: st.info.variant.clone(),
        width: w as usize,
        height: h as usize,
        timings_ms: RequestTimings {
            decode: ms(t1 - t0),
            queue: ms(started.saturating_duration_since(t1)),
            inference: ms(t2.saturating_duration_since(started)),
            encode: ms(t3 - t2),
            total: ms(t3 - t0),
        },
        results,
    }))
}

/// The body, at most `max_body_bytes`, arriving at `min_upload_rate` or faster
/// once `upload_grace` is over: by every moment t, rate × (t − grace) bytes.
async fn read_body(mut body: Body, lim: &Limits, declared: Option<u64>) -> Result<Bytes, ApiError> {
    let start = tokio::time::Instant::now();
    let mut buf = Vec::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        let frame = if lim.min_upload_rate == 0 {
            body.frame().await
        } else {
            let behind = Duration::from_secs_f64(buf.len() as f64 / lim.min_upload_rate as f64);
            match tokio::time::timeout_at(start + *lim.upload_grace + behind, body.frame()).await {
                Ok(f) => f,
                Err(_) => {
                    let of = declared.map(|n| format!(" of {n}")).unwrap_or_default();
                    return Err(ApiError::limit(
                        StatusCode::REQUEST_TIMEOUT,
                        "min_upload_rate",
                        format!(
                            "the body arrived slower than {} bytes/s after the first {} s ({}{of} bytes in {:.1} s)",
                            lim.min_upload_rate,
                            lim.upload_grace,
                            buf.len(),
                            start.elapsed().as_secs_f64()
                        ),
                    ));
                }
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => return Err(ApiError::bad(format!("cannot read the request body: {e}"))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if buf.len() + data.len() > lim.max_body_bytes {
                        return Err(ApiError::limit(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "max_body_bytes",
                            format!("the request body is larger than {} bytes", lim.max_body_bytes),
                        ));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// Why encoding the answer stopped.
enum Encode {
    Cancelled,
    /// Over `max_answer_bytes` at this sentence (1-based).
    TooBig(usize),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Encode {
    fn from(e: anyhow::Error) -> Encode {
        Encode::Failed(e)
    }
}

impl From<detris_io::Error> for Encode {
    fn from(e: detris_io::Error) -> Encode {
        Encode::Failed(e.into())
    }
}

/// The answer's sentences; stops at a cancelled request or past `max_bytes`
/// of PNGs and RLE (checked after each image, the costly steps).
fn encode(
    photo: &Rgb,
    masks: &[SentenceMask],
    token_counts: &[usize],
    cancel: &Cancel,
    max_bytes: usize,
) -> Result<Vec<SentenceAnswer>, Encode> {
    let mut out = Vec::with_capacity(masks.len());
    let mut bytes = 0usize;
    for (i, (m, &tokens)) in masks.iter().zip(token_counts).enumerate() {
        let mut step = |len: usize| {
            bytes += len;
            if cancel.is_set() {
                Err(Encode::Cancelled)
            } else if bytes > max_bytes {
                Err(Encode::TooBig(i + 1))
            } else {
                Ok(())
            }
        };
        let rle = RleJson::encode(&m.mask, m.width, m.height)?;
        step(rle.counts.len())?;
        let pngs = crate::mask_formats::sentence_pngs(photo, &m.mask, i)?;
        let mask_png = B64.encode(pngs.mask);
        step(mask_png.len())?;
        let overlay_png = B64.encode(pngs.overlay);
        step(overlay_png.len())?;
        out.push(SentenceAnswer {
            sentence: m.sentence.clone(),
            area: m.area,
            area_fraction: m.area_fraction(),
            mean_probability: m.mean_probability,
            tokens,
            truncated: m.truncated,
            token_ids: m.token_ids.clone(),
            warnings: m.warnings(i),
            timings_ms: m.timings_ms.clone(),
            mask_png,
            overlay_png,
            rle,
        });
    }
    Ok(out)
}
