//! `detris serve`: a web page and a JSON API over one loaded model.
//!
//! ```text
//! TCP accept (at most max_connections; header and idle timeouts per connection, conn.rs)
//!   → HTTP/1.1 (hyper) → axum routes, the request timeout and a log line per request (api.rs)
//!   → upload (max_uploads, max_buffered_bytes, max_body_bytes, min_upload_rate)
//!   → parse multipart/JSON, check sentences, photo header (side, pixels, pixels × sentences), decode
//!   → the model queue (queue) → the worker thread (owns the Segmenter; tch tensors are not Sync),
//!     which stops between sentences once the request is abandoned or out of time
//!   → PNG / RLE encoding (max_answer_bytes) → JSON
//! ```

pub mod api;
mod conn;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use detris_io::image::{PostPath, Rgb};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::segment::{Cancelled, Segmenter, SentenceMask};
use crate::Detris;

/// Every limit of the server, its flag and its default: one struct for the
/// server, the request parser and the command line.
pub use detris_io::request::{Limits, Seconds};

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

/// Tells the worker that a request no longer wants its answer: its handler
/// ended or was dropped (client gone, request timeout), or its time is up.
#[derive(Clone)]
pub(crate) struct Cancel {
    gone: Arc<AtomicBool>,
    deadline: Instant,
}

/// Marks its [`Cancel`] as gone when dropped (the handler owns it).
pub(crate) struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Cancel {
    pub(crate) fn new(deadline: Instant) -> (Cancel, CancelOnDrop) {
        let gone = Arc::new(AtomicBool::new(false));
        (Cancel { gone: gone.clone(), deadline }, CancelOnDrop(gone))
    }
    pub(crate) fn is_set(&self) -> bool {
        self.gone.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }
}

/// One segmentation for the worker thread.
pub(crate) struct Job {
    pub photo: Arc<Rgb>,
    pub sentences: Vec<String>,
    pub cancel: Cancel,
    /// When the worker picked the job up, and what came out.
    pub reply: oneshot::Sender<(Instant, Result<Vec<SentenceMask>>)>,
}

/// What the worker is doing, for `/healthz`.
#[derive(Default)]
pub(crate) struct WorkerStatus {
    /// When the job it runs started; None when idle.
    running_since: Mutex<Option<Instant>>,
}

impl WorkerStatus {
    fn set(&self, v: Option<Instant>) {
        *self.running_since.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
    pub(crate) fn running_since(&self) -> Option<Instant> {
        *self.running_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the handlers share.
pub(crate) struct AppState {
    pub limits: Limits,
    pub info: ModelInfo,
    pub jobs: mpsc::SyncSender<Job>,
    /// Complete requests waiting for or running on the model.
    pub queue: Semaphore,
    /// Bodies being uploaded.
    pub uploads: Semaphore,
    /// Bytes of bodies held (uploading or being parsed).
    pub buffered: Semaphore,
    /// Open connections (held by conn.rs).
    pub connections: Arc<Semaphore>,
    pub worker: Arc<WorkerStatus>,
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
    limits.check().map_err(|e| anyhow!("{e}"))?;
    // Never full: a job is sent only with a queue permit.
    let (jobs_tx, jobs_rx) = mpsc::sync_channel::<Job>(limits.queue);
    let worker = Arc::new(WorkerStatus::default());
    let worker_status = worker.clone();
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
            worker_loop(&seg, jobs_rx, &worker_status);
        })
        .context("cannot start the worker thread")?;
    let info = ready_rx.recv().map_err(|_| anyhow!("the worker thread died while loading the model"))??;
    // Load the CLIP vocabulary now rather than in the first request.
    detris_io::tokenizer::ClipTokenizer::global().tokenize("warm up", info.word_len)?;

    let listener =
        std::net::TcpListener::bind(options.bind).with_context(|| format!("cannot listen on {}", options.bind))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let state = Arc::new(AppState {
        queue: Semaphore::new(limits.queue),
        uploads: Semaphore::new(limits.max_uploads),
        buffered: Semaphore::new(limits.max_buffered_bytes),
        connections: connections.clone(),
        worker,
        limits: limits.clone(),
        info: info.clone(),
        jobs: jobs_tx,
        started: Instant::now(),
    });
    let app = api::router(state)?;
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let http = std::thread::Builder::new()
        .name("detris-http".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                conn::serve(listener, app, limits, connections, shutdown_rx).await;
                Ok(())
            })
        })
        .context("cannot start the HTTP thread")?;
    Ok(Running { addr, shutdown: Some(shutdown_tx), http: Some(http), info })
}

/// Runs jobs one at a time until every sender is gone. A job whose request
/// gave up (timeout, client gone) is answered [`Cancelled`] without running,
/// or stopped at its next sentence;
/// a panic inside libtorch answers that job with an error and keeps the worker alive.
fn worker_loop(seg: &Segmenter, jobs: mpsc::Receiver<Job>, status: &WorkerStatus) {
    for job in jobs {
        if job.cancel.is_set() {
            let _ = job.reply.send((Instant::now(), Err(Cancelled.into())));
            continue;
        }
        let started = Instant::now();
        status.set(Some(started));
        let stop = || job.cancel.is_set();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            seg.segment_until(&job.photo, &job.sentences, &stop)
        }))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(anyhow!("the model failed: {msg}"))
        });
        status.set(None);
        let _ = job.reply.send((started, result));
    }
}
