//! `detris serve`: a web page and a JSON API over one loaded model.
//!
//! ```text
//! HTTP (axum, tokio) ──admission: a semaphore of `queue` permits, else 503──┐
//!   read body (size limit) → parse multipart/JSON → check sentences → decode photo (pixel limit)
//!   → bounded channel → the worker thread (owns the Segmenter; tch tensors are not Sync)
//!   → PNG / RLE encoding → JSON
//! ```
//!
//! Every response goes through one middleware that applies the request timeout
//! and writes one JSON log line per request on stderr.

pub mod api;
// The hand-written HTTP client of `serve-load` and the tests; not part of the library's API.
#[doc(hidden)]
pub mod client;
#[doc(hidden)]
pub mod load;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use detris_io::image::{PostPath, Rgb};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::segment::{Segmenter, SentenceMask};
use crate::Detris;

/// What one request may ask for. Each limit has a name that error bodies quote
/// (`{"error": "...", "limit": "max_sentences"}`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// `max_body_bytes`: the whole request body (413).
    pub max_body_bytes: usize,
    /// `max_image_pixels`: width × height of the photo, read from its header before decoding (413).
    pub max_image_pixels: u64,
    /// `max_sentences`: sentences per request (400).
    pub max_sentences: usize,
    /// `max_sentence_bytes`: UTF-8 bytes per sentence (400).
    pub max_sentence_bytes: usize,
    /// `max_sentence_tokens`: CLIP tokens per sentence, SOT and EOT included, before the cut to
    /// the model's word length (400). Sentences within it but over the word length are cut and
    /// flagged `truncated`, as `detris segment` does.
    pub max_sentence_tokens: usize,
    /// `queue`: segment requests in flight (reading, waiting, running, encoding) before 503.
    pub queue: usize,
    /// `timeout_ms`: wall time of one request, body upload included (408).
    pub timeout: Duration,
}

impl Limits {
    /// The limits that the request parser checks (`detris_io::request`).
    pub fn request_limits(&self) -> detris_io::request::RequestLimits {
        detris_io::request::RequestLimits {
            max_image_pixels: self.max_image_pixels,
            max_sentences: self.max_sentences,
            max_sentence_bytes: self.max_sentence_bytes,
            max_sentence_tokens: self.max_sentence_tokens,
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 20 << 20,
            max_image_pixels: 25_000_000,
            max_sentences: 16,
            max_sentence_bytes: 1024,
            max_sentence_tokens: 77,
            queue: 16,
            timeout: Duration::from_secs(60),
        }
    }
}

/// How to run the server.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on; port 0 picks a free one (see [`Running::addr`]).
    pub bind: SocketAddr,
    pub limits: Limits,
    pub post: PostPath,
    /// Foreground where the probability is above this (0.35, as the official code).
    pub threshold: f32,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            limits: Limits::default(),
            post: PostPath::Test,
            threshold: detris_io::image::THRESHOLD,
        }
    }
}

/// `GET /v1/model`.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    /// The config's name: detris-b, detris-l, detris-l-mixed or a custom name.
    pub variant: String,
    pub input_size: usize,
    pub word_len: usize,
    pub device: String,
    pub dtype: String,
    pub dims: Dims,
    pub post: &'static str,
    pub config: crate::DetrisConfig,
}

#[derive(Clone, Debug, Serialize)]
pub struct Dims {
    pub txt_width: usize,
    pub txt_layers: usize,
    pub embed_dim: usize,
    pub dino_dim: usize,
    pub dino_depth: usize,
    pub vis_dim: usize,
    pub dec_layers: usize,
    pub patch_size: usize,
}

impl ModelInfo {
    fn new(model: &Detris, post: PostPath) -> ModelInfo {
        let c = &model.config;
        ModelInfo {
            variant: c.name.clone(),
            input_size: c.input_size,
            word_len: c.word_len,
            device: format!("{:?}", model.device()).to_lowercase(),
            dtype: format!("{:?}", model.kind()).to_lowercase(),
            dims: Dims {
                txt_width: c.txt_width,
                txt_layers: c.txt_layers,
                embed_dim: c.embed_dim,
                dino_dim: c.dino_dim,
                dino_depth: c.dino_depth,
                vis_dim: c.vis_dim,
                dec_layers: c.dec_layers,
                patch_size: c.patch_size,
            },
            post: match post {
                PostPath::Test => "test",
                PostPath::Demo => "demo",
            },
            config: c.clone(),
        }
    }
}

/// One segmentation for the worker thread.
pub(crate) struct Job {
    pub photo: Arc<Rgb>,
    pub sentences: Vec<String>,
    /// When the worker picked the job up, and what came out.
    pub reply: oneshot::Sender<(Instant, Result<Vec<SentenceMask>>)>,
}

/// What the handlers share.
pub(crate) struct AppState {
    pub limits: Limits,
    pub info: ModelInfo,
    pub jobs: mpsc::SyncSender<Job>,
    pub permits: Semaphore,
    pub started: Instant,
}

/// A server running on its own threads.
pub struct Running {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    http: Option<JoinHandle<Result<()>>>,
    pub info: ModelInfo,
}

impl Running {
    /// The address it listens on (the real port when bound to port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Blocks until the HTTP server ends (it does not by itself).
    pub fn wait(mut self) -> Result<()> {
        let http = self.http.take().expect("joined once");
        http.join().map_err(|_| anyhow!("the HTTP thread panicked"))?
    }

    /// Stops accepting connections, lets open requests finish, joins the HTTP thread.
    /// The worker thread ends when the last job sender is gone.
    pub fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.wait()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Loads the model on a new worker thread (with `load`, so that the model never
/// crosses threads), binds `options.bind`, and serves on a background thread.
/// Returns once the model is loaded and the socket listens; load and bind
/// errors are returned here.
pub fn spawn<F>(load: F, options: ServeOptions) -> Result<Running>
where
    F: FnOnce() -> Result<Detris> + Send + 'static,
{
    let limits = options.limits.clone();
    anyhow::ensure!(limits.queue > 0, "the queue must hold at least one request");
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(limits.queue);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<ModelInfo>>();
    let (post, threshold) = (options.post, options.threshold);
    std::thread::Builder::new()
        .name("detris-worker".into())
        .spawn(move || {
            let seg = match load().and_then(|m| Segmenter::builder().model(m).post(post).threshold(threshold).build()) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(ModelInfo::new(&seg.model, post)));
            worker_loop(&seg, jobs_rx);
        })
        .context("cannot start the worker thread")?;
    let info = ready_rx.recv().map_err(|_| anyhow!("the worker thread died while loading the model"))??;
    // Load the CLIP vocabulary now rather than in the first request.
    detris_io::tokenizer::ClipTokenizer::global().tokenize("warm up", info.word_len)?;

    let listener =
        std::net::TcpListener::bind(options.bind).with_context(|| format!("cannot listen on {}", options.bind))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState {
        permits: Semaphore::new(limits.queue),
        limits,
        info: info.clone(),
        jobs: jobs_tx,
        started: Instant::now(),
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let http = std::thread::Builder::new()
        .name("detris-http".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                axum::serve(listener, api::router(state))
                    .with_graceful_shutdown(async move {
                        let _ = shutdown_rx.await;
                    })
                    .await?;
                Ok(())
            })
        })
        .context("cannot start the HTTP thread")?;
    Ok(Running { addr, shutdown: Some(shutdown_tx), http: Some(http), info })
}

/// Runs jobs one at a time until every sender is gone. A job whose request
/// already gave up (timeout, client gone) is skipped; a panic inside libtorch
/// answers that job with an error and keeps the worker alive.
fn worker_loop(seg: &Segmenter, jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        if job.reply.is_closed() {
            continue;
        }
        let started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| seg.segment(&job.photo, &job.sentences)))
            .unwrap_or_else(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into());
                Err(anyhow!("the model failed: {msg}"))
            });
        let _ = job.reply.send((started, result));
    }
}
