//! The routes: `GET /`, `POST /v1/segment`, `GET /v1/model`, `GET /healthz`,
//! `GET /openapi.json`; errors as `{"error": "...", "limit": "..."}`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use detris_io::image::Rgb;
use detris_io::request::Rejection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::oneshot;

use super::{AppState, Job};
use crate::segment::{SentenceMask, Timings};

/// The page: one file, inline CSS and JS, no external assets.
pub const PAGE: &str = include_str!("page.html");
/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    let timeout = state.limits.timeout;
    let body_limit = state.limits.max_body_bytes;
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/healthz", get(healthz))
        .route("/v1/model", get(model))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .route("/v1/segment", post(segment))
        .fallback(|uri: Uri| async move { ApiError::new(StatusCode::NOT_FOUND, format!("no such endpoint: {uri}")) })
        .method_not_allowed_fallback(|| async { ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(timeout, log_and_timeout))
        .with_state(state)
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
    Json(json!({
        "status": "ok",
        "uptime_s": st.started.elapsed().as_secs(),
        "in_flight": st.limits.queue - st.permits.available_permits(),
        "queue": st.limits.queue,
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
    pub results: Vec<SentenceResult>,
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

/// One sentence's mask.
#[derive(Serialize, Deserialize, Debug)]
pub struct SentenceResult {
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

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct SentenceTimings {
    pub preprocess: f64,
    pub forward: f64,
    pub postprocess: f64,
}

impl From<&Timings> for SentenceTimings {
    fn from(t: &Timings) -> SentenceTimings {
        SentenceTimings { preprocess: t.preprocess, forward: t.forward, postprocess: t.postprocess }
    }
}

pub use crate::render::{rle_encode, RleJson};

async fn segment(State(st): State<Arc<AppState>>, req: Request) -> Result<Json<SegmentResponse>, ApiError> {
    let t0 = Instant::now();
    // Admission first: a full server answers at once, before reading any body.
    let _permit = st.permits.try_acquire().map_err(|_| {
        ApiError::limit(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue",
            format!("the server is busy ({} requests in flight); retry in a moment", st.limits.queue),
        )
    })?;
    let lim = &st.limits;
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
    let ctype = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let bytes = Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_big()
        } else {
            ApiError::bad(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    // Parsing, the sentence limits and decoding are CPU work: off the async threads.
    let (request_limits, word_len) = (lim.request_limits(), st.info.word_len);
    let request = tokio::task::spawn_blocking(move || {
        detris_io::request::parse_segment_request(&ctype, bytes, &request_limits, word_len)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::from)?;
    let (photo, texts, token_counts) = (request.photo, request.texts, request.token_counts);
    let (w, h) = photo.dimensions();
    let photo = Arc::new(photo);
    let t1 = Instant::now();

    let (tx, rx) = oneshot::channel();
    st.jobs.try_send(Job { photo: photo.clone(), sentences: texts, reply: tx }).map_err(|e| match e {
        std::sync::mpsc::TrySendError::Full(_) => {
            ApiError::limit(StatusCode::SERVICE_UNAVAILABLE, "queue", "the server is busy; retry in a moment")
        }
        std::sync::mpsc::TrySendError::Disconnected(_) => ApiError::internal("the model worker has stopped"),
    })?;
    let (started, result) = rx.await.map_err(|_| ApiError::internal("the model worker has stopped"))?;
    let masks = result.map_err(|e| ApiError::internal(format!("{e:#}")))?;
    let t2 = Instant::now();

    let results = tokio::task::spawn_blocking(move || encode(&photo, &masks, &token_counts))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
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

fn encode(photo: &Rgb, masks: &[SentenceMask], token_counts: &[usize]) -> anyhow::Result<Vec<SentenceResult>> {
    let mut out = Vec::with_capacity(masks.len());
    for (i, (m, &tokens)) in masks.iter().zip(token_counts).enumerate() {
        let pngs = crate::render::sentence_pngs(photo, &m.mask, i)?;
        out.push(SentenceResult {
            sentence: m.sentence.clone(),
            area: m.area,
            area_fraction: m.area_fraction(),
            mean_probability: m.mean_probability,
            tokens,
            truncated: m.truncated,
            token_ids: m.token_ids.clone(),
            warnings: m.warnings(i),
            timings_ms: (&m.timings_ms).into(),
            mask_png: B64.encode(pngs.mask),
            overlay_png: B64.encode(pngs.overlay),
            rle: RleJson::encode(&m.mask, m.width, m.height)?,
        });
    }
    Ok(out)
}
