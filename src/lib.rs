//! detris: DETRIS referring image segmentation on libtorch (tch). Give it a photo and
//! sentences that name objects in it ("the dog on the left"); it gives one mask per sentence.
//!
//! Everything a program needs is re-exported here, so `detris` is the only crate to depend on.
//!
//! # Segmenting
//!
//! [`Segmenter::builder`] loads the model that ships with detris unless told otherwise; the
//! builder also chooses the device, the precision, the post-processing path and the threshold.
//!
//! ```
//! use detris::{load_rgb, Device, Segmenter};
//!
//! let seg = Segmenter::builder().device(Device::Cpu).probabilities(true).build()?;
//! let photo = load_rgb(concat!(env!("CARGO_MANIFEST_DIR"), "/models/example.png"))?;
//! let results = seg.segment(&photo, &["the shape left of the big square"])?;
//! let r = &results[0];
//! assert_eq!((r.width as u32, r.height as u32), photo.dimensions());
//! assert_eq!(r.mask.iter().filter(|&&m| m).count(), r.area);
//! println!("{:?}: {} px, mean probability {:.2}", r.sentence, r.area, r.mean_probability);
//! for warning in r.warnings(0) {
//!     eprintln!("warning: {warning}"); // cut to the word length, or words the model never saw
//! }
//! // The mask and overlay PNGs that `detris segment` writes, and the probability heat map.
//! let pngs = detris::mask_formats::sentence_pngs(&photo, &r.mask, 0)?;
//! let heat = detris::mask_formats::probability_png(r.probabilities.as_ref().unwrap(), r.width, r.height)?;
//! # assert!(!pngs.mask.is_empty() && !pngs.overlay.is_empty() && !heat.is_empty());
//! # Ok::<(), detris::Error>(())
//! ```
//!
//! # Loading an official checkpoint
//!
//! An official DETRIS `.pth` (the variant DETRIS-B / -L / -L* is read from its shapes), a
//! detris `.safetensors` (its config travels in the metadata), or the pretrained backbones
//! ([`SegmenterBuilder::backbones`]) plus a checkpoint of the trained parts:
//!
//! ```
//! use detris::{Device, PostPath, Segmenter};
//!
//! # let tiny = detris_io::fixtures::path("tiny");
//! # let checkpoint = tiny.join("detris_ckpt.pth");
//! // checkpoint = "DETRIS_base_refcoco.pth", as released
//! let seg = Segmenter::builder()
//!     .checkpoint(checkpoint)
//! #   .config_file(tiny.join("config.json")) // the test checkpoint is no released variant
//!     .word_len(17) // 22 for the RefCOCOg-umd models
//!     .device(Device::Cpu)
//!     .post(PostPath::Test) // the official test.py; PostPath::Demo is demo.py
//!     .threshold(0.35)
//!     .build()?;
//! assert_eq!(seg.model.config.word_len, 17);
//! # Ok::<(), detris::Error>(())
//! ```
//!
//! # Evaluating
//!
//! mIoU, oIoU and Pr@50..90 on a split of a data set in the prepared layout (`detris data
//! prepare` writes it from the REFER downloads; here a small synthetic one), with one record
//! per sentence:
//!
//! ```
//! use detris::{evaluate, DataSource, Device, EvalOutputs, EvalRequest, Segmenter};
//!
//! let data = std::env::temp_dir().join(format!("detris-doc-eval-{}", std::process::id()));
//! detris_io::data::synth::generate(&data, &detris_io::data::synth::SynthOptions::new(0, 10))?;
//!
//! let seg = Segmenter::builder().device(Device::Cpu).build()?;
//! // Every sentence of the test split (Mode::Test), 8 per batch; also one record per sentence.
//! let request = EvalRequest {
//!     outputs: EvalOutputs { records: true, ..EvalOutputs::default() },
//!     ..EvalRequest::new(DataSource::new(&data, "synth"), "test")
//! };
//! let report = evaluate(&seg.model, &request)?;
//! let m = &report.summary;
//! println!("mIoU {:.2} oIoU {:.2} over {} sentences", 100.0 * m.miou, 100.0 * m.oiou, m.count);
//! let mean: f64 = report.records.iter().map(|r| r.iou).sum::<f64>() / report.records.len() as f64;
//! assert!((mean - m.miou).abs() < 1e-12);
//! # std::fs::remove_dir_all(&data)?;
//! # Ok::<(), detris::Error>(())
//! ```
//!
//! # The house
//!
//! files → `detris_io` readers → [`weights`] → [`model`] → logits → [`segment`]
//! (post-processing, masks) → [`mask_formats`] (PNGs, RLE) / [`eval`] (metrics) / [`batch`]
//! (manifests) / [`serve`] (HTTP).

pub mod batch;
pub mod config;
pub mod data;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod mask_formats;
pub mod model;
pub mod segment;
pub mod serve;
pub mod shipped;
pub mod train;
pub mod weights;

pub use anyhow::{Error, Result};
pub use config::DetrisConfig;
pub use data::{DataSource, DataSpec};
pub use detris_io::data::loader::Mode;
pub use detris_io::image::{decode_rgb, load_rgb, PostPath, Rgb, THRESHOLD};
pub use detris_io::metrics::Summary;
pub use device::Precision;
pub use eval::{evaluate, EvalOutputs, EvalReport, EvalRequest, SentenceRecord};
pub use model::Detris;
pub use segment::{Cancelled, Segmenter, SegmenterBuilder, SentenceMask, SentenceTimings};
pub use tch::{Device, Kind};
