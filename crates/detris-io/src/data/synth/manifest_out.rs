//! The synthetic data set as one's own data is given: manifests (see
//! [`crate::data::manifest`]) of photos, sentences and mask PNGs, one per split.
//!
//! ```text
//! DIR/train.jsonl, DIR/val.jsonl, DIR/test.jsonl   {"id": "<ref>", "image": "images/NNNNNN.<ext>",
//!                                                   "sentences": [...], "mask": "masks/<ref>.png"}
//! DIR/images/NNNNNN.<ext>                          the photos (JPEG for `photo`, PNG for `plain`)
//! DIR/masks/<ref>.png                              0/255, the visible pixels of the object
//! DIR/scenes.json                                  the scene behind every photo
//! ```
//!
//! The pictures, sentences and splits are those [`super::generate_styled`] makes from the
//! same options, so one seed gives the same data in either layout.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SynthOptions;
use super::{each_picture, encode_png, shares_attribute, split_streams, write_bytes, write_json, SplitReport, Style};
use crate::error::{Error, Result};

/// What [`generate_manifest`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifestReport {
    pub style: Style,
    /// The manifests, train, val and test.
    pub manifests: Vec<PathBuf>,
    pub splits: Vec<SplitReport>,
    /// Sentences per expression kind (all splits).
    pub kinds: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct Line {
    id: String,
    image: String,
    sentences: Vec<String>,
    mask: String,
}

/// Writes the synthetic data set in `style` under `out` as manifests (see the module docs).
pub fn generate_manifest(out: &Path, opts: &SynthOptions, style: Style) -> Result<ManifestReport> {
    opts.check()?;
    for dir in [out.join("images"), out.join("masks")] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let mut report = ManifestReport { style, manifests: Vec::new(), splits: Vec::new(), kinds: BTreeMap::new() };
    let (mut next_image, mut next_ref) = (1usize, 0usize);
    let mut scenes = Vec::new();
    for (split, seed, tag, count) in split_streams(opts) {
        let mut split_report = SplitReport::empty(split);
        let mut text = String::new();
        each_picture(opts, style, (seed, tag, count), |picture| {
            let image = format!("images/{next_image:06}.{}", picture.extension);
            write_bytes(&out.join(&image), &picture.photo)?;
            let (w, h) = (picture.scene.width, picture.scene.height);
            for (target, expressions) in &picture.refs {
                let mask = format!("masks/{next_ref}.png");
                let grey: Vec<u8> = picture.masks[*target].iter().map(|&v| v * 255).collect();
                write_bytes(&out.join(&mask), &encode_png(&grey, w, h, png::ColorType::Grayscale)?)?;
                let sentences: Vec<String> = expressions.iter().map(|e| e.text()).collect();
                for e in expressions {
                    *report.kinds.entry(e.kind().name().to_string()).or_default() += 1;
                }
                split_report.refs += 1;
                split_report.sentences += sentences.len();
                if shares_attribute(&picture.scene, *target) {
                    split_report.sentences_with_shared_attribute += sentences.len();
                }
                let line = Line { id: next_ref.to_string(), image: image.clone(), sentences, mask };
                text.push_str(&serde_json::to_string(&line).map_err(|e| Error::input(format!("JSON: {e}")))?);
                text.push('\n');
                next_ref += 1;
            }
            scenes.push(serde_json::json!({"image": image, "split": split, "scene": picture.scene}));
            split_report.images += 1;
            next_image += 1;
            Ok(())
        })?;
        let manifest = out.join(format!("{split}.jsonl"));
        write_bytes(&manifest, text.as_bytes())?;
        report.manifests.push(manifest);
        report.splits.push(split_report);
    }
    write_json(&out.join("scenes.json"), &scenes)?;
    Ok(report)
}

#[cfg(test)]
mod tests;
