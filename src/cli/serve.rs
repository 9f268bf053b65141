//! `detris serve` and `detris serve-load` (the server under a bounded load run, [`load`]).

mod load;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use detris::serve::{self, Limits, ServeOptions};
use detris_io::image::PostPath;

use super::model_args::{InferenceArgs, InferencePrecision, ModelArgs};

/// The server's limits (each field of [`Limits`] is a flag) and post-processing.
#[derive(Args, Clone)]
pub struct LimitArgs {
    #[command(flatten)]
    limits: Limits,
    /// Post-processing: the official test.py's or demo.py's.
    #[arg(long, value_enum, default_value_t = PostPath::Test)]
    post: PostPath,
    #[command(flatten)]
    threshold: super::segment::ThresholdArg,
}

impl LimitArgs {
    fn options(&self, bind: SocketAddr) -> Result<ServeOptions> {
        self.limits.check().map_err(super::usage)?;
        Ok(ServeOptions { bind, limits: self.limits.clone(), post: self.post, threshold: self.threshold.threshold })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    inference: InferenceArgs,
    /// Address to listen on (port 0: any free port). Use 0.0.0.0:PORT to be reachable from other machines.
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    #[command(flatten)]
    limits: LimitArgs,
}

pub fn run(mut a: ServeArgs) -> Result<()> {
    a.inference.yaml.apply(&mut a.inference.model)?;
    let options = a.limits.options(a.bind)?;
    let (model, precision) = (a.inference.model.clone(), a.inference.precision.precision);
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
