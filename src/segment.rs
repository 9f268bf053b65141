//! Photo + sentences → masks at the photo's size: the front door of the library. Shared by
//! `detris segment`, `detris serve`, `detris eval` and the tests, so that they give identical
//! pixels.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use detris_io::image::{self, Letterbox, PostPath, Prob, Rgb, THRESHOLD};
use detris_io::tokenizer::{self, ClipTokenizer, Tokens};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::config::DetrisConfig;
use crate::device::{DeviceArg, Precision};
use crate::model::{Ctx, Detris};
use crate::weights::{self, ConfigChoice, WeightFiles};

pub use detris_io::tokenizer::check_sentence;

/// One sentence's result.
#[derive(Clone, Debug, Serialize)]
pub struct SentenceMask {
    pub sentence: String,
    /// The padded token ids the model saw (length = word length).
    pub token_ids: Vec<i64>,
    /// CLIP tokens of the sentence, SOT and EOT included, before the cut to the word length.
    pub tokens: usize,
    /// True when the sentence had more tokens than the word length.
    pub truncated: bool,
    /// When truncated: the words the model saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept_text: Option<String>,
    /// Words (BPE tokens) the model's vocabulary never saw (a model trained on a small
    /// language, like the shipped one, knows only some tokens); empty when all are known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_words: Vec<String>,
    pub width: usize,
    pub height: usize,
    /// Foreground pixels of the mask.
    pub area: usize,
    /// Mean probability over the mask's pixels (0 for an empty mask).
    pub mean_probability: f32,
    /// `height × width` row-major, true = foreground (probability above the threshold).
    #[serde(skip)]
    pub mask: Vec<bool>,
    /// `height × width` row-major probabilities, when the segmenter was asked for them.
    #[serde(skip)]
    pub probabilities: Option<Vec<f32>>,
    pub timings_ms: SentenceTimings,
}

impl SentenceMask {
    /// What a user should be told about this sentence: it was cut to the word length, or it
    /// uses words the model never saw. `index` is the sentence's 0-based position.
    pub fn warnings(&self, index: usize) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(kept) = &self.kept_text {
            out.push(format!(
                "sentence {} is longer than the model's {} tokens; it was cut to: {kept:?}",
                index + 1,
                self.token_ids.len()
            ));
        }
        if !self.unknown_words.is_empty() {
            out.push(format!(
                "{:?} uses words this model never saw ({}); expect a poor mask",
                self.sentence,
                self.unknown_words.join(", ")
            ));
        }
        out
    }

    /// `area` / (width × height).
    pub fn area_fraction(&self) -> f64 {
        self.area as f64 / (self.width * self.height).max(1) as f64
    }
}

/// Milliseconds per stage of one sentence; the stages its photo shares with the other
/// sentences (preprocessing, and the forward pass split evenly) are counted for each.
/// The server answers with these too.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SentenceTimings {
    pub preprocess: f64,
    pub forward: f64,
    pub postprocess: f64,
}

/// What [`Segmenter::segment_until`] returns when its `stop` said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the segmentation was cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// A loaded model and how its logits become masks. Build one with [`Segmenter::builder`]
/// (weights from files, the shipped model by default) or [`Segmenter::new`] (a model already
/// loaded, official settings).
#[derive(Debug)]
pub struct Segmenter {
    pub model: Detris,
    post: PostPath,
    threshold: f32,
    probabilities: bool,
}

/// Where the weights come from, the device, the precision and the post-processing of a
/// [`Segmenter`]. Every option has the official default.
#[derive(Debug)]
pub struct SegmenterBuilder {
    files: WeightFiles,
    choice: ConfigChoice,
    model: Option<Detris>,
    device: Option<Device>,
    /// What [`SegmenterBuilder::precision`] asked for, or why it cannot be (told at `build`).
    precision: Result<Precision>,
    post: PostPath,
    threshold: f32,
    probabilities: bool,
}

impl Default for SegmenterBuilder {
    fn default() -> SegmenterBuilder {
        SegmenterBuilder {
            files: WeightFiles::default(),
            choice: ConfigChoice::default(),
            model: None,
            device: None,
            precision: Ok(Precision::F32),
            post: PostPath::Test,
            threshold: THRESHOLD,
            probabilities: false,
        }
    }
}

impl SegmenterBuilder {
    /// An official DETRIS `.pth` or a detris `.safetensors` file (with [`Self::backbones`]:
    /// only the trained parts). Without any weights the shipped model is used.
    pub fn checkpoint(mut self, path: impl Into<PathBuf>) -> Self {
        self.files.checkpoint = Some(path.into());
        self
    }

    /// The pretrained backbones: a DINOv2 `.pth` and the OpenAI CLIP TorchScript archive.
    pub fn backbones(mut self, dinov2: impl Into<PathBuf>, clip: impl Into<PathBuf>) -> Self {
        self.files.dinov2 = Some(dinov2.into());
        self.files.clip = Some(clip.into());
        self
    }

    /// All weight files at once (what `--checkpoint`, `--dinov2`, `--clip` give).
    pub fn weight_files(mut self, files: WeightFiles) -> Self {
        self.files = files;
        self
    }

    /// The whole config choice at once (see [`ConfigChoice`]).
    pub fn config_choice(mut self, choice: ConfigChoice) -> Self {
        self.choice = choice;
        self
    }

    /// A config JSON (detris or fixture format) for what the weights' shapes cannot tell.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.choice.config = Some(path.into());
        self
    }

    /// A config already built (e.g. from an official YAML file).
    pub fn config(mut self, config: DetrisConfig) -> Self {
        self.choice.inline = Some(config);
        self
    }

    /// A named variant: detris-b, detris-l, detris-l-mixed.
    pub fn variant(mut self, name: impl Into<String>) -> Self {
        self.choice.variant = Some(name.into());
        self
    }

    /// The word length (17; 22 for RefCOCOg-umd models).
    pub fn word_len(mut self, word_len: usize) -> Self {
        self.choice.word_len = Some(word_len);
        self
    }

    /// A model already loaded (the weight options are then not used).
    pub fn model(mut self, model: Detris) -> Self {
        self.model = Some(model);
        self
    }

    /// Where the model runs (default: CUDA when available, else the CPU).
    pub fn device(mut self, device: Device) -> Self {
        self.device = Some(device);
        self
    }

    /// `Kind::Float` (default), `Kind::BFloat16` or `Kind::Half`. On the CPU, bf16 also packs
    /// the frozen backbones' linear layers for oneDNN (see [`crate::model::packing`]).
    pub fn precision(mut self, kind: Kind) -> Self {
        self.precision = Precision::of_kind(kind);
        self
    }

    /// The precision as the commands' `--precision` names it: besides f32, bf16 and f16,
    /// `Int8` (CPU only: the frozen backbones' linear layers in int8, the rest in bf16) and
    /// `Auto` (bf16 where the hardware has bf16 matrix units, else f32).
    pub fn inference_precision(mut self, precision: Precision) -> Self {
        self.precision = Ok(precision);
        self
    }

    /// `PostPath::Test` (official test.py, default) or `PostPath::Demo` (demo.py).
    pub fn post(mut self, post: PostPath) -> Self {
        self.post = post;
        self
    }

    /// Foreground where the probability is above this (default 0.35, as the official code).
    pub fn threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    /// Keep each sentence's probability map in [`SentenceMask::probabilities`].
    pub fn probabilities(mut self, keep: bool) -> Self {
        self.probabilities = keep;
        self
    }

    /// Loads the weights (unless a model was given) and checks the options.
    pub fn build(self) -> Result<Segmenter> {
        check_threshold(self.threshold)?;
        let model = match self.model {
            Some(m) => m,
            None => {
                let device = open_device(self.device)?;
                weights::load_for_inference(&self.files, &self.choice, device, self.precision?)?
            }
        };
        Ok(Segmenter { model, post: self.post, threshold: self.threshold, probabilities: self.probabilities })
    }
}

fn check_threshold(t: f32) -> Result<()> {
    if !(0.0..=1.0).contains(&t) {
        bail!("threshold {t}: use a probability between 0 and 1 (the official value is {THRESHOLD})");
    }
    Ok(())
}

/// The device asked for (`None`: the best one), checked.
fn open_device(device: Option<Device>) -> Result<Device> {
    Ok(match device {
        None => DeviceArg::Auto.open()?,
        // Checks that the GPU exists.
        Some(Device::Cuda(n)) => DeviceArg::Cuda(n).open()?,
        Some(d) => d,
    })
}

impl Segmenter {
    /// Options for loading and running a model; `Segmenter::builder().build()` is the shipped
    /// model on the best device with the official post-processing.
    pub fn builder() -> SegmenterBuilder {
        SegmenterBuilder::default()
    }

    /// A loaded model with the official post-processing (test.py, threshold 0.35).
    pub fn new(model: Detris) -> Segmenter {
        Segmenter { model, post: PostPath::Test, threshold: THRESHOLD, probabilities: false }
    }

    pub fn post(&self) -> PostPath {
        self.post
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    /// Tokenises one sentence to the model's word length.
    pub fn tokenize(&self, sentence: &str) -> Result<Tokens> {
        check_sentence(sentence)?;
        Ok(ClipTokenizer::global().tokenize(sentence, self.model.config.word_len)?)
    }

    /// Segments every sentence on one photo. The text-independent part of the image encoder
    /// runs once (see [`Detris::forward_sentences`]).
    pub fn segment(&self, photo: &Rgb, sentences: &[impl AsRef<str>]) -> Result<Vec<SentenceMask>> {
        self.segment_until(photo, sentences, || false)
    }

    /// [`Self::segment`], asking `stop` before the model runs and before each sentence's
    /// post-processing; when it answers true the call returns a [`Cancelled`] error (find it
    /// with `err.downcast_ref::<Cancelled>()`). The server's worker passes "the client gave up".
    pub fn segment_until(
        &self,
        photo: &Rgb,
        sentences: &[impl AsRef<str>],
        stop: impl Fn() -> bool,
    ) -> Result<Vec<SentenceMask>> {
        if sentences.is_empty() {
            bail!("no sentence given");
        }
        image::check_min_side(photo)?;
        let tokens = sentences.iter().map(|s| self.tokenize(s.as_ref())).collect::<Result<Vec<_>>>()?;
        let cfg = &self.model.config;
        let t0 = Instant::now();
        let (chw, letterbox) = image::preprocess(photo, cfg.input_size);
        let t1 = Instant::now();
        if stop() {
            return Err(Cancelled.into());
        }
        let logits = self.forward(&chw, &tokens.iter().map(|t| t.ids.clone()).collect::<Vec<_>>())?;
        let t2 = Instant::now();
        let k = sentences.len();
        let mut out = Vec::with_capacity(k);
        for (i, (sentence, tok)) in sentences.iter().zip(tokens).enumerate() {
            if stop() {
                return Err(Cancelled.into());
            }
            let t3 = Instant::now();
            let prob = self.postprocess(&logits, i, &letterbox)?;
            let area = prob.mask.iter().filter(|&&m| m).count();
            // Confidence inside the mask (the photo-wide mean is mostly background).
            let inside: f64 = prob.prob.iter().zip(&prob.mask).filter(|(_, &m)| m).map(|(&p, _)| p as f64).sum();
            let mean_probability = if area == 0 { 0.0 } else { (inside / area as f64) as f32 };
            out.push(SentenceMask {
                sentence: sentence.as_ref().to_string(),
                kept_text: tok.truncated.then(|| kept_text(&tok.ids)),
                unknown_words: self.unknown_words(&tok.ids),
                tokens: tok.n_ids,
                token_ids: tok.ids,
                truncated: tok.truncated,
                width: prob.width,
                height: prob.height,
                area,
                mean_probability,
                mask: prob.mask,
                probabilities: self.probabilities.then_some(prob.prob),
                timings_ms: SentenceTimings {
                    preprocess: ms(t1 - t0),
                    forward: ms(t2 - t1) / k as f64,
                    postprocess: ms(t3.elapsed()),
                },
            });
        }
        Ok(out)
    }

    /// chw (3·S·S) and K id rows → logits (K, 1, h, w) on the CPU, f32.
    pub fn forward(&self, chw: &[f32], ids: &[Vec<i64>]) -> Result<Tensor> {
        let s = self.model.config.input_size as i64;
        let device = self.model.device();
        let img = Tensor::from_slice(chw).view([1, 3, s, s]).to_device(device).to_kind(self.model.kind());
        let flat: Vec<i64> = ids.iter().flatten().copied().collect();
        let ids = Tensor::from_slice(&flat).view([ids.len() as i64, -1]).to_device(device);
        let logits = tch::no_grad(|| self.model.forward_sentences(&img, &ids, &Ctx::eval()));
        Ok(logits.to_device(tch::Device::Cpu).to_kind(Kind::Float))
    }

    /// Sentence i's logits back to the photo with this segmenter's path and threshold.
    pub fn postprocess(&self, logits: &Tensor, i: usize, lb: &Letterbox) -> Result<Prob> {
        logits_to_prob(logits, i, lb, self.post, self.threshold)
    }

    /// The tokens among `ids` (between SOT and EOT) that the model's vocabulary lacks, as words.
    fn unknown_words(&self, ids: &[i64]) -> Vec<String> {
        let Some(known) = &self.model.known_token_ids else { return Vec::new() };
        sentence_ids(ids)
            .iter()
            .filter(|id| known.binary_search(id).is_err())
            .map(|&id| ClipTokenizer::global().decode(&[id]).map(|w| w.trim().to_string()).unwrap_or_default())
            .collect()
    }
}

/// Row `i` of CPU f32 logits (K, 1, h, w) → probability map and mask at the photo's size
/// (the official post-processing of `post`, then `prob > threshold`). Used by segmenting and
/// evaluation alike.
pub fn logits_to_prob(logits: &Tensor, i: usize, lb: &Letterbox, post: PostPath, threshold: f32) -> Result<Prob> {
    let one = logits.get(i as i64).squeeze_dim(0).contiguous();
    let (lh, lw) = one.size2()?;
    let values: Vec<f32> = Vec::<f32>::try_from(&one.flatten(0, -1))?;
    let mut prob = image::postprocess(&values, lh as usize, lw as usize, lb, post)?;
    if threshold != THRESHOLD {
        prob.mask = prob.prob.iter().map(|&p| p > threshold).collect();
    }
    Ok(prob)
}

/// The word ids of padded ids: after SOT, before EOT.
fn sentence_ids(ids: &[i64]) -> &[i64] {
    let start = usize::from(ids.first() == Some(&tokenizer::SOT));
    let end = ids.iter().position(|&id| id == tokenizer::EOT).unwrap_or(ids.len());
    &ids[start.min(end)..end]
}

/// The text of a cut sentence's ids, as the model saw it.
fn kept_text(ids: &[i64]) -> String {
    ClipTokenizer::global().decode(sentence_ids(ids)).map(|t| t.trim().to_string()).unwrap_or_default()
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
