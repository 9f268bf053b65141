//! The `detris` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(name = "detris", version, about = "DETRIS referring image segmentation: segment, train, evaluate, serve")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment the objects that sentences name in a photo: mask PNG, overlay PNG and JSON per sentence.
    Segment(cli::segment::SegmentArgs),
    /// Parameter-efficient training (the official recipe), resumable.
    Train(cli::train::TrainArgs),
    /// mIoU, oIoU and Pr@50..90 on data set splits, as the official test.py.
    Eval(cli::eval::EvalArgs),
    /// Data sets: synthetic referring data, and the prepared layout from REFER downloads.
    Data(cli::data::DataArgs),
    /// Write a detris safetensors file (optionally f16, pruned vocabulary) from any weights.
    Export(cli::export::ExportArgs),
    /// Benchmark a variant with random weights: plain vs fast mode, seconds per image, peak memory.
    Bench(cli::bench::BenchArgs),
    /// Serve a web page and a JSON API (POST /v1/segment) over one loaded model.
    Serve(cli::serve::ServeArgs),
    /// Load run: start the server on loopback, send N requests (some malformed), print latency and memory.
    #[command(hide = true)]
    ServeLoad(cli::serve::ServeLoadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<()> = match cli.command {
        Command::Segment(a) => cli::segment::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Data(a) => cli::data::run(a),
        Command::Export(a) => cli::export::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::ServeLoad(a) => cli::serve::run_load(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}
