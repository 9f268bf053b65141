//! A synthetic referring-segmentation data set (`detris data synth`), written
//! in the REFER download layout so that the readers of real data serve it too:
//!
//! ```text
//! DIR/synth/instances.json          COCO: images, annotations (exact masks as RLE), categories
//! DIR/synth/refs(unc).p             protocol-2 pickle of the ref dicts
//! DIR/synth/scenes.json             the scene behind every image (shapes, colours, sizes, centres)
//! DIR/images/train2014/synth_NNNNNN.png
//! DIR/anns/synth/{train,val,test}.json   the prepared layout, as data_process.py writes it
//! DIR/masks/synth/<ref_id>.png
//! ```
//!
//! Each picture holds 2–6 flat-coloured shapes (see [`scene`]) on a solid,
//! gradient, noise or striped background; masks are the visible pixels. Each
//! referred object gets up to three expressions of different kinds (see
//! [`expr`]), each checked to name exactly that object. Words come from the
//! fixed [`VOCABULARY`].
//!
//! Determinism: every image is drawn from its own ChaCha8 stream keyed by
//! (stream seed, split, index), so the same options give byte-identical
//! files whatever the thread count, and the test split (keyed by
//! `test_seed`) does not change with `seed`.

pub mod expr;
mod manifest_out;
pub mod scene;
pub mod style;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::pickle::writer::{to_pickle, PickleValue};
use expr::Expression;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use scene::{Rendered, Scene};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use expr::VOCABULARY;
pub use manifest_out::{generate_manifest, ManifestReport};
pub use style::Style;

/// Data set name (folder under `anns/`, `masks/` and the REFER root).
pub const DATASET: &str = "synth";
/// REFER split-by name of the refs file: `refs(unc).p`.
pub const SPLIT_BY: &str = "unc";
/// Test-split seed used unless told otherwise; independent of `seed`.
pub const DEFAULT_TEST_SEED: u64 = 0x7e57_5eed;

/// Image sizes of the generated pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    Fixed {
        width: usize,
        height: usize,
    },
    /// Width and height each drawn uniformly from `min..=max` per image.
    Varied {
        min: usize,
        max: usize,
    },
}

/// Smallest and largest image side accepted.
pub const MIN_SIDE: usize = 64;
pub const MAX_SIDE: usize = 2048;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthOptions {
    /// Seed of the train and val splits.
    pub seed: u64,
    /// Seed of the test split (its own stream, so the test images stay put when `seed` changes).
    pub test_seed: u64,
    pub train_images: usize,
    pub val_images: usize,
    pub test_images: usize,
    pub image_size: ImageSize,
    /// Objects referred to per picture (each gets one ref), at most.
    pub max_refs_per_image: usize,
    /// Expressions per ref, at most (each of a different kind).
    pub sentences_per_ref: usize,
}

impl Default for SynthOptions {
    fn default() -> Self {
        SynthOptions::new(0, 1000)
    }
}

impl SynthOptions {
    /// `images` pictures in all: 80% train, 10% val, 10% test (each split at
    /// least one picture when `images` ≥ 3); varied sizes 192–256 px.
    pub fn new(seed: u64, images: usize) -> Self {
        let held_out = if images >= 3 { (images / 10).max(1) } else { 0 };
        SynthOptions {
            seed,
            test_seed: DEFAULT_TEST_SEED,
            train_images: images - 2 * held_out,
            val_images: held_out,
            test_images: held_out,
            image_size: ImageSize::Varied { min: 192, max: 256 },
            max_refs_per_image: 3,
            sentences_per_ref: 3,
        }
    }

    fn check(&self) -> Result<()> {
        let side_ok = |s: usize| (MIN_SIDE..=MAX_SIDE).contains(&s);
        let sizes_ok = match self.image_size {
            ImageSize::Fixed { width, height } => side_ok(width) && side_ok(height),
            ImageSize::Varied { min, max } => side_ok(min) && side_ok(max) && min <= max,
        };
        if !sizes_ok {
            return Err(Error::input(format!(
                "synthetic image size {:?}: sides must lie in {MIN_SIDE}..={MAX_SIDE}",
                self.image_size
            )));
        }
        if self.train_images + self.val_images + self.test_images == 0 {
            return Err(Error::input("synthetic data set: asked for 0 images"));
        }
        if self.max_refs_per_image == 0 || self.sentences_per_ref == 0 {
            return Err(Error::input("synthetic data set: refs per image and sentences per ref must be ≥ 1"));
        }
        Ok(())
    }
}

/// Figures of one split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitReport {
    pub split: String,
    pub images: usize,
    pub refs: usize,
    pub sentences: usize,
    /// Sentences whose object shares its colour or its shape with another
    /// object in its picture (so neither word alone identifies it).
    pub sentences_with_shared_attribute: usize,
}

impl SplitReport {
    /// A split with nothing counted yet.
    fn empty(split: &str) -> SplitReport {
        SplitReport { split: split.into(), images: 0, refs: 0, sentences: 0, sentences_with_shared_attribute: 0 }
    }

    /// Share of sentences whose object is not the only one of its colour or shape.
    pub fn shared_attribute_share(&self) -> f64 {
        self.sentences_with_shared_attribute as f64 / self.sentences.max(1) as f64
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SynthReport {
    /// `DIR/synth`, the REFER root of the data set.
    pub refer_dir: PathBuf,
    pub splits: Vec<SplitReport>,
    /// Sentences per expression kind (all splits).
    pub kinds: BTreeMap<String, usize>,
}

impl SynthReport {
    pub fn split(&self, name: &str) -> Option<&SplitReport> {
        self.splits.iter().find(|s| s.split == name)
    }
}

/// Pictures generated in parallel, then written in order, this many at a time.
const CHUNK: usize = 64;

/// Writes the synthetic data set under `out` (see the module docs).
pub fn generate(out: &Path, opts: &SynthOptions) -> Result<SynthReport> {
    generate_styled(out, opts, Style::Plain)
}

/// [`generate`] with the pictures in `style` (`plain` is [`generate`]'s look).
pub fn generate_styled(out: &Path, opts: &SynthOptions, style: Style) -> Result<SynthReport> {
    opts.check()?;
    let refer_dir = out.join(DATASET);
    let image_dir = out.join("images").join("train2014");
    let mask_dir = out.join("masks").join(DATASET);
    let ann_dir = out.join("anns").join(DATASET);
    for dir in [&refer_dir, &image_dir, &mask_dir, &ann_dir] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }

    let mut files = Files::default();
    let mut report = SynthReport { refer_dir: refer_dir.clone(), splits: Vec::new(), kinds: BTreeMap::new() };
    for (split, seed, tag, count) in split_streams(opts) {
        let mut split_report = SplitReport::empty(split);
        let mut prepared = Vec::new();
        each_picture(opts, style, (seed, tag, count), |picture| {
            files.add(picture, split, &image_dir, &mask_dir, &mut split_report, &mut report.kinds, &mut prepared)
        })?;
        write_json(&ann_dir.join(format!("{split}.json")), &prepared)?;
        report.splits.push(split_report);
    }
    files.finish(&refer_dir)?;
    Ok(report)
}

/// The pictures of one split's stream `(seed, tag, count)` in order, made `CHUNK` at a time in parallel.
fn each_picture(
    opts: &SynthOptions,
    style: Style,
    (seed, tag, count): (u64, u64, usize),
    mut each: impl FnMut(Picture) -> Result<()>,
) -> Result<()> {
    for start in (0..count).step_by(CHUNK) {
        let pictures: Vec<Picture> = (start..(start + CHUNK).min(count))
            .into_par_iter()
            .map(|index| Picture::make(seed, tag, index as u64, opts, style))
            .collect::<Result<_>>()?;
        pictures.into_iter().try_for_each(&mut each)?;
    }
    Ok(())
}

/// (split, stream seed, split tag, pictures) of the three splits.
fn split_streams(opts: &SynthOptions) -> [(&'static str, u64, u64, usize); 3] {
    [
        ("train", opts.seed, 0u64, opts.train_images),
        ("val", opts.seed, 1, opts.val_images),
        ("test", opts.test_seed, 2, opts.test_images),
    ]
}

/// One generated picture, encoded, before ids are given out.
struct Picture {
    scene: Scene,
    /// The encoded photo, a file of `extension`.
    photo: Vec<u8>,
    extension: &'static str,
    /// Per object: its exact mask (row-major 0/1).
    masks: Vec<Vec<u8>>,
    /// Referred objects with their expressions.
    refs: Vec<(usize, Vec<Expression>)>,
}

impl Picture {
    fn make(seed: u64, tag: u64, index: u64, opts: &SynthOptions, style: Style) -> Result<Picture> {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&tag.to_le_bytes());
        key[16..24].copy_from_slice(&index.to_le_bytes());
        let mut rng = ChaCha8Rng::from_seed(key);
        // The look has its own stream, so a style never shifts the draws of the scene's.
        key[24] = 1;
        let mut look = ChaCha8Rng::from_seed(key);
        let (width, height) = style.picture_size(opts.image_size, &mut rng, &mut look);
        let scene = Scene::sample(&mut rng, width, height);
        let rendered: Rendered = scene.render();
        let masks = (0..scene.objects.len()).map(|i| rendered.mask(i)).collect();

        let mut targets: Vec<usize> = (0..scene.objects.len()).collect();
        rand::seq::SliceRandom::shuffle(&mut targets[..], &mut rng);
        let mut refs = Vec::new();
        for target in targets {
            if refs.len() == opts.max_refs_per_image {
                break;
            }
            let expressions = expr::choose(&scene, target, opts.sentences_per_ref, &mut rng);
            if !expressions.is_empty() {
                refs.push((target, expressions));
            }
        }
        refs.sort_by_key(|&(target, _)| target);
        let photo = style.encode(&rendered, &mut look)?;
        Ok(Picture { scene, photo, extension: style.extension(), masks, refs })
    }
}

/// The REFER-side records, gathered while pictures are written.
#[derive(Default)]
struct Files {
    images: Vec<serde_json::Value>,
    annotations: Vec<serde_json::Value>,
    refs: Vec<PickleValue>,
    scenes: Vec<serde_json::Value>,
    next_ann_id: i64,
    next_ref_id: i64,
    next_sent_id: i64,
}

/// One element of `anns/<ds>/<split>.json`, keys in data_process.py's order.
#[derive(Serialize)]
struct PreparedRef {
    bbox: [i64; 4],
    cat: i64,
    segment_id: i64,
    img_name: String,
    sentences: Vec<PreparedSentence>,
    sentences_num: usize,
}

#[derive(Serialize)]
struct PreparedSentence {
    idx: usize,
    sent_id: i64,
    sent: String,
}

impl Files {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        picture: Picture,
        split: &str,
        image_dir: &Path,
        mask_dir: &Path,
        report: &mut SplitReport,
        kinds: &mut BTreeMap<String, usize>,
        prepared: &mut Vec<PreparedRef>,
    ) -> Result<()> {
        let Picture { scene, photo, extension, masks, refs } = picture;
        let image_id = self.images.len() as i64 + 1;
        let file_name = format!("{DATASET}_{image_id:06}.{extension}");
        let (w, h) = (scene.width, scene.height);
        write_bytes(&image_dir.join(&file_name), &photo)?;
        self.images.push(serde_json::json!({
            "id": image_id, "file_name": file_name, "height": h, "width": w,
        }));

        let first_ann_id = self.next_ann_id + 1;
        let mut boxes = Vec::new();
        for (i, mask) in masks.iter().enumerate() {
            let ann_id = first_ann_id + i as i64;
            let bbox = mask_box(mask, w);
            boxes.push(bbox);
            self.annotations.push(serde_json::json!({
                "id": ann_id,
                "image_id": image_id,
                "category_id": scene.objects[i].shape.category_id(),
                "segmentation": {"size": [h, w], "counts": column_major_runs(mask, w, h)},
                "area": mask.iter().map(|&v| v as u64).sum::<u64>(),
                "bbox": bbox,
                "iscrowd": 0,
            }));
        }
        self.next_ann_id += masks.len() as i64;

        report.images += 1;
        for (target, expressions) in refs {
            let object = &scene.objects[target];
            let shares = shares_attribute(&scene, target);
            let ref_id = self.next_ref_id;
            self.next_ref_id += 1;
            let ann_id = first_ann_id + target as i64;
            let mut sentences = Vec::new();
            let mut sent_ids = Vec::new();
            let mut prepared_sentences = Vec::new();
            for (idx, expression) in expressions.iter().enumerate() {
                let text = expression.text();
                let sent_id = self.next_sent_id;
                self.next_sent_id += 1;
                *kinds.entry(expression.kind().name().to_string()).or_default() += 1;
                report.sentences += 1;
                report.sentences_with_shared_attribute += usize::from(shares);
                sentences.push(PickleValue::dict([
                    ("tokens", PickleValue::List(text.split(' ').map(PickleValue::str).collect())),
                    ("raw", PickleValue::str(&text)),
                    ("sent_id", PickleValue::Int(sent_id)),
                    ("sent", PickleValue::str(&text)),
                ]));
                sent_ids.push(PickleValue::Int(sent_id));
                prepared_sentences.push(PreparedSentence { idx, sent_id, sent: text });
            }
            self.refs.push(PickleValue::dict([
                ("sent_ids", PickleValue::List(sent_ids)),
                ("file_name", PickleValue::str(format!("{DATASET}_{image_id:06}_{ann_id}.png"))),
                ("ann_id", PickleValue::Int(ann_id)),
                ("ref_id", PickleValue::Int(ref_id)),
                ("image_id", PickleValue::Int(image_id)),
                ("split", PickleValue::str(split)),
                ("sentences", PickleValue::List(sentences)),
                ("category_id", PickleValue::Int(object.shape.category_id())),
            ]));
            let mask_png: Vec<u8> = masks[target].iter().map(|&v| v * 255).collect();
            write_bytes(
                &mask_dir.join(format!("{ref_id}.png")),
                &encode_png(&mask_png, w, h, png::ColorType::Grayscale)?,
            )?;
            let [x, y, bw, bh] = boxes[target];
            prepared.push(PreparedRef {
                bbox: [x, y, x + bw, y + bh],
                // COCO ids 1..=6 are the first six of the official 80-class table.
                cat: object.shape.category_id() - 1,
                segment_id: ref_id,
                img_name: file_name.clone(),
                sentences_num: prepared_sentences.len(),
                sentences: prepared_sentences,
            });
            report.refs += 1;
        }
        self.scenes.push(serde_json::json!({
            "image_id": image_id,
            "file_name": file_name,
            "split": split,
            "first_ann_id": first_ann_id,
            "scene": scene,
        }));
        Ok(())
    }

    fn finish(self, refer_dir: &Path) -> Result<()> {
        let categories: Vec<_> = scene::Shape::ALL
            .iter()
            .map(|s| serde_json::json!({"id": s.category_id(), "name": s.word(), "supercategory": "shape"}))
            .collect();
        let instances = serde_json::json!({
            "info": {"description": "detris synthetic shapes"},
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": categories,
        });
        write_json(&refer_dir.join("instances.json"), &instances)?;
        write_json(&refer_dir.join("scenes.json"), &self.scenes)?;
        write_bytes(&refer_dir.join(format!("refs({SPLIT_BY}).p")), &to_pickle(&PickleValue::List(self.refs)))
    }
}

/// Whether object `target` shares its colour or its shape with another object of the scene.
fn shares_attribute(scene: &Scene, target: usize) -> bool {
    let object = &scene.objects[target];
    scene.objects.iter().enumerate().any(|(j, o)| j != target && (o.colour == object.colour || o.shape == object.shape))
}

/// COCO `[x, y, w, h]` of the mask's pixels (pycocotools `toBbox`); zeros when empty.
fn mask_box(mask: &[u8], w: usize) -> [i64; 4] {
    let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
    for (i, _) in mask.iter().enumerate().filter(|&(_, &v)| v != 0) {
        let (x, y) = (i % w, i / w);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
    }
    if x0 == usize::MAX {
        return [0; 4];
    }
    [x0 as i64, y0 as i64, (x1 - x0) as i64, (y1 - y0) as i64]
}

/// Uncompressed COCO RLE counts: column-major runs, background first.
fn column_major_runs(mask: &[u8], w: usize, h: usize) -> Vec<u32> {
    let mut counts = Vec::new();
    let (mut current, mut run) = (0u8, 0u32);
    for x in 0..w {
        for y in 0..h {
            let v = u8::from(mask[y * w + x] != 0);
            if v != current {
                counts.push(run);
                (current, run) = (v, 0);
            }
            run += 1;
        }
    }
    counts.push(run);
    counts
}

fn encode_png(pixels: &[u8], w: usize, h: usize, colour: png::ColorType) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, w as u32, h as u32);
    encoder.set_color(colour);
    encoder.set_depth(png::BitDepth::Eight);
    let fail = |e: png::EncodingError| Error::input(format!("cannot encode a {w}x{h} PNG: {e}"));
    let mut writer = encoder.write_header().map_err(fail)?;
    writer.write_image_data(pixels).map_err(fail)?;
    writer.finish().map_err(fail)?;
    Ok(bytes)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let bytes = serde_json::to_vec(value).map_err(|e| Error::invalid(path, format!("cannot serialise: {e}")))?;
    write_bytes(path, &bytes)
}
