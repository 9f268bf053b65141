mod check;

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
    /// Write a synthetic referring data set (REFER and prepared layouts, or
    /// manifests with --manifest-out).
    Synth {
        /// Folder of the REFER and prepared layouts.
        #[arg(long, required_unless_present = "manifest_out", conflicts_with = "manifest_out")]
        out: Option<PathBuf>,
        /// Write the data set as one's own data instead: DIR/{train,val,test}.jsonl
        /// manifests, photos in DIR/images, masks in DIR/masks.
        #[arg(long, value_name = "DIR")]
        manifest_out: Option<PathBuf>,
        /// The look of the pictures: plain (the shipped model's training look) or
        /// photo (a new domain: non-square JPEG photos, textured backgrounds, colour
        /// cast, uneven light, blur, noise); --size is then the long side.
        #[arg(long, default_value = "plain")]
        style: String,
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
    /// Write the prepared layout (anns/ + masks/) from a REFER download, as
    /// the official tools/data_process.py: refcoco and refcoco+ (unc),
    /// refcocog (umd → refcocog_u, google → refcocog_g), refclef (unc,
    /// berkeley); or the mixed set of DETRIS-L* (--mixed).
    Prepare {
        /// Folder with <dataset>/refs(<split_by>).p, <dataset>/instances.json and
        /// images/train2014/ (refclef: images/saiapr_tc-12/). With --mixed:
        /// refcoco, refcoco+ and refcocog (umd) are prepared from it first; without
        /// it, --mixed reads them already prepared under --out.
        #[arg(long)]
        refer: Option<PathBuf>,
        /// refcoco, refcoco+, refcocog, refclef, or refcoco_mixed (= --mixed).
        #[arg(long, default_value = "refcoco")]
        dataset: String,
        /// unc, umd or google (refcoco, refcoco+ and refclef default to unc;
        /// refcocog needs umd or google; refclef also has berkeley).
        #[arg(long)]
        split_by: Option<String>,
        #[arg(long)]
        out: PathBuf,
        /// The mixed training set of DETRIS-L* (tools/mix.py, tools/mix_mask.py):
        /// the train and val splits of refcoco, refcoco+ and refcocog_u
        /// concatenated as refcoco_mixed, ids renamed <dataset>_<ref id>.
        #[arg(long)]
        mixed: bool,
        /// With --mixed: leave out the training refs whose pictures are in any
        /// source's val or test split. The official set keeps them (so the
        /// released DETRIS-L* models saw evaluation pictures in training);
        /// filter to measure without that leak.
        #[arg(long, requires = "mixed")]
        exclude_eval_images: bool,
    },
    /// Check a manifest (PATH) or a prepared split (--data --split): counts, bad lines with
    /// their numbers, photo sizes, mask areas, sentences cut at the model's word length, words
    /// outside its vocabulary, duplicate ids, and with --val the photos both sides share.
    Check(Box<check::CheckArgs>),
}

pub fn run(a: DataArgs) -> Result<()> {
    match a.command {
        DataCommand::Synth { out, manifest_out, style, seed, images, test_seed, size } => {
            let style = synth::Style::parse(&style).map_err(|e| super::usage(e.to_string()))?;
            let mut opts = SynthOptions::new(seed, images);
            if let Some(t) = test_seed {
                opts.test_seed = t;
            }
            if let Some(s) = size {
                opts.image_size = ImageSize::Fixed { width: s, height: s };
            }
            let usage = |e: detris_io::Error| super::usage(e.to_string());
            let report = match (out, manifest_out) {
                (Some(out), _) => serde_json::to_value(synth::generate_styled(&out, &opts, style).map_err(usage)?)?,
                (None, Some(dir)) => {
                    serde_json::to_value(synth::generate_manifest(&dir, &opts, style).map_err(usage)?)?
                }
                (None, None) => return Err(super::usage("give --out or --manifest-out")),
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        DataCommand::Prepare { refer, dataset, split_by, out, mixed, exclude_eval_images } => {
            use detris_io::data::{prepared, splits};
            if mixed || dataset == splits::MIXED {
                if let Some(refer) = &refer {
                    for (source, by) in [("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")] {
                        let report = prepared::prepare(refer, source, Some(by), &out)?;
                        println!("{report:#?}");
                    }
                }
                let report = prepared::prepare_mixed(&out, exclude_eval_images)?;
                println!("{report:#?}");
            } else {
                let refer = refer.ok_or_else(|| super::usage("--refer is required (except with --mixed)"))?;
                let report = prepared::prepare(&refer, &dataset, split_by.as_deref(), &out)?;
                println!("{report:#?}");
            }
        }
        DataCommand::Check(args) => check::run(*args)?,
    }
    Ok(())
}
