use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use detris_io::data::synth::{self, ImageSize, SynthOptions};

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write a synthetic referring data set (REFER and prepared layouts).
    Synth {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Pictures in all (80% train, 10% val, 10% test).
        #[arg(long, default_value_t = 1000)]
        images: usize,
        /// Seed of the test split (its own stream).
        #[arg(long)]
        test_seed: Option<u64>,
        /// A fixed square picture side instead of varied sizes.
        #[arg(long)]
        size: Option<usize>,
    },
    /// Write the prepared layout (anns/ + masks/) from a REFER download.
    Prepare {
        /// Folder with <dataset>/refs(<split_by>).p, <dataset>/instances.json and images/train2014/.
        #[arg(long)]
        refer: PathBuf,
        #[arg(long, default_value = "refcoco")]
        dataset: String,
        /// unc, umd or google (refcoco and refcoco+ default to unc; refcocog needs umd or google).
        #[arg(long)]
        split_by: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Synth { out, seed, images, test_seed, size } => {
            let mut opts = SynthOptions::new(seed, images);
            if let Some(t) = test_seed {
                opts.test_seed = t;
            }
            if let Some(s) = size {
                opts.image_size = ImageSize::Fixed { width: s, height: s };
            }
            let report = synth::generate(&out, &opts).map_err(|e| super::usage(e.to_string()))?;
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        DataCommand::Prepare { refer, dataset, split_by, out } => {
            let report = detris_io::data::prepared::prepare(&refer, &dataset, split_by.as_deref(), &out)?;
            println!("{report:#?}");
        }
    }
    Ok(())
}
