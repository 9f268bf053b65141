use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use detris::serve::{self, load, Limits, ServeOptions};
use detris_io::image::PostPath;

use super::model_args::{InferencePrecision, ModelArgs};

#[derive(Args, Clone)]
pub struct LimitArgs {
    /// Requests in flight (reading, waiting for the model, running) before 503 + Retry-After.
    #[arg(long, default_value_t = Limits::default().queue)]
    queue: usize,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Largest photo, width × height pixels (checked from the header before decoding).
    #[arg(long, default_value_t = Limits::default().max_image_pixels)]
    max_image_pixels: u64,
    /// Most sentences per request.
    #[arg(long, default_value_t = Limits::default().max_sentences)]
    max_sentences: usize,
    /// Longest sentence, UTF-8 bytes.
    #[arg(long, default_value_t = Limits::default().max_sentence_bytes)]
    max_sentence_bytes: usize,
    /// Longest sentence, CLIP tokens with SOT and EOT (longer than the word length is cut and flagged).
    #[arg(long, default_value_t = Limits::default().max_sentence_tokens)]
    max_sentence_tokens: usize,
    /// Request timeout in seconds, upload included (408).
    #[arg(long, default_value_t = Limits::default().timeout.as_secs_f64())]
    timeout_secs: f64,
    /// Post-processing path: `test` (official test.py) or `demo` (demo.py).
    #[arg(long, default_value = "test")]
    post: String,
}

impl LimitArgs {
    fn options(&self, bind: SocketAddr) -> Result<ServeOptions> {
        let post = match self.post.as_str() {
            "test" => PostPath::Test,
            "demo" => PostPath::Demo,
            other => return Err(super::usage(format!("--post `{other}`: use test or demo"))),
        };
        if self.queue == 0 {
            return Err(super::usage("--queue must be at least 1"));
        }
        if !(self.timeout_secs > 0.0 && self.timeout_secs.is_finite()) {
            return Err(super::usage("--timeout-secs must be a positive number"));
        }
        let limits = Limits {
            max_body_bytes: self.max_body_bytes,
            max_image_pixels: self.max_image_pixels,
            max_sentences: self.max_sentences,
            max_sentence_bytes: self.max_sentence_bytes,
            max_sentence_tokens: self.max_sentence_tokens,
            queue: self.queue,
            timeout: Duration::from_secs_f64(self.timeout_secs),
        };
        Ok(ServeOptions { bind, limits, post })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    precision: InferencePrecision,
    /// Address to listen on (port 0: any free port). Use 0.0.0.0:PORT to be reachable from other machines.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let options = a.limits.options(a.bind)?;
    let (model, precision) = (a.model.clone(), a.precision.precision);
    let running = serve::spawn(move || model.load_in(precision), options)?;
    let info = &running.info;
    eprintln!(
        "detris serve: {} ({}×{} input, word length {}, {} {}) on http://{}/",
        info.variant,
        info.input_size,
        info.input_size,
        info.word_len,
        info.device,
        info.dtype,
        running.addr()
    );
    running.wait()
}

/// `detris serve-load`: starts the server in this process on a free loopback
/// port, sends the requests, prints the report and stops.
#[derive(Args)]
pub struct ServeLoadArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    precision: InferencePrecision,
    /// The photo the valid requests send.
    #[arg(long)]
    image: PathBuf,
    /// Sentences of each valid request (repeat).
    #[arg(long = "text", default_values_t = ["the cup on the table".to_string()])]
    texts: Vec<String>,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Every N-th request is malformed (0: none).
    #[arg(long, default_value_t = 10)]
    malformed_every: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run_load(a: ServeLoadArgs) -> Result<()> {
    let image = std::fs::read(&a.image).with_context(|| format!("{}: cannot read", a.image.display()))?;
    let options = a.limits.options(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let (model, precision) = (a.model.clone(), a.precision.precision);
    let running = serve::spawn(move || model.load_in(precision), options)?;
    let opts = load::LoadOptions {
        requests: a.requests,
        concurrency: a.concurrency,
        malformed_every: a.malformed_every,
        image,
        sentences: a.texts,
    };
    let report = load::run(running.addr(), &opts)?;
    println!("{report}");
    running.stop()
}
