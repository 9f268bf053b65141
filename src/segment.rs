//! Photo + sentences → masks at the photo's size. Shared by `detris segment`,
//! `detris serve` and the tests, so that they give identical pixels.

use std::time::Instant;

use anyhow::{bail, Result};
use detris_io::image::{self, Letterbox, PostPath, Rgb};
use detris_io::tokenizer::ClipTokenizer;
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::model::{Ctx, Detris};

pub use detris_io::tokenizer::check_sentence;

/// One sentence's result.
#[derive(Clone, Debug, Serialize)]
pub struct SentenceMask {
    pub sentence: String,
    /// The padded token ids the model saw (length = word length).
    pub token_ids: Vec<i64>,
    /// True when the sentence had more tokens than the word length.
    pub truncated: bool,
    pub width: usize,
    pub height: usize,
    /// Foreground pixels of the mask.
    pub area: usize,
    /// Mean probability over the mask's pixels (0 for an empty mask).
    pub mean_probability: f32,
    #[serde(skip)]
    pub mask: Vec<bool>,
    pub timings_ms: Timings,
}

/// Milliseconds per stage; the shared stages are counted for every sentence.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timings {
    pub preprocess: f64,
    pub forward: f64,
    pub postprocess: f64,
}

/// What [`Segmenter::segment_until`] returns when its `stop` said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped before the end: the caller gave up")
    }
}

impl std::error::Error for Cancelled {}

pub struct Segmenter {
    pub model: Detris,
    /// `Test` (test.py: sigmoid, bicubic) or `Demo` (demo.py: bilinear logits).
    pub post: PostPath,
}

impl Segmenter {
    pub fn new(model: Detris) -> Segmenter {
        Segmenter { model, post: PostPath::Test }
    }

    /// Tokenises one sentence to the model's word length.
    pub fn tokenize(&self, sentence: &str) -> Result<detris_io::tokenizer::Tokens> {
        check_sentence(sentence)?;
        Ok(ClipTokenizer::global().tokenize(sentence, self.model.config.word_len)?)
    }

    /// Segments every sentence on one photo. The text-independent part of
    /// the image encoder runs once (see [`Detris::forward_sentences`]).
    pub fn segment(&self, photo: &Rgb, sentences: &[String]) -> Result<Vec<SentenceMask>> {
        self.segment_until(photo, sentences, &|| false)
    }

    /// [`Segmenter::segment`] that asks `stop` before the model and before and
    /// after each sentence's post-processing (the part that grows with the
    /// photo), and returns [`Cancelled`] as soon as it says true.
    pub fn segment_until(
        &self,
        photo: &Rgb,
        sentences: &[String],
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<SentenceMask>> {
        let check = || if stop() { Err(Cancelled) } else { Ok(()) };
        if sentences.is_empty() {
            bail!("no sentence given");
        }
        image::check_min_side(photo)?;
        let tokens = sentences.iter().map(|s| self.tokenize(s)).collect::<Result<Vec<_>>>()?;
        let cfg = &self.model.config;
        let t0 = Instant::now();
        let (chw, letterbox) = image::preprocess(photo, cfg.input_size);
        let t1 = Instant::now();
        check()?;
        let logits = self.forward(&chw, &tokens.iter().map(|t| t.ids.clone()).collect::<Vec<_>>())?;
        let t2 = Instant::now();
        let k = sentences.len();
        let mut out = Vec::with_capacity(k);
        for (i, (sentence, tok)) in sentences.iter().zip(tokens).enumerate() {
            let t3 = Instant::now();
            check()?;
            let prob = self.postprocess(&logits, i, &letterbox)?;
            check()?;
            let area = prob.mask.iter().filter(|&&m| m).count();
            // Confidence inside the mask (the photo-wide mean is mostly background).
            let inside: f64 = prob.prob.iter().zip(&prob.mask).filter(|(_, &m)| m).map(|(&p, _)| p as f64).sum();
            let mean_probability = if area == 0 { 0.0 } else { (inside / area as f64) as f32 };
            out.push(SentenceMask {
                sentence: sentence.clone(),
                token_ids: tok.ids,
                truncated: tok.truncated,
                width: prob.width,
                height: prob.height,
                area,
                mean_probability,
                mask: prob.mask,
                timings_ms: Timings {
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

    /// Sentence i's logits back to the photo: the official post-processing.
    pub fn postprocess(&self, logits: &Tensor, i: usize, lb: &Letterbox) -> Result<image::Prob> {
        let one = logits.get(i as i64).squeeze_dim(0).contiguous();
        let (lh, lw) = one.size2()?;
        let values: Vec<f32> = Vec::<f32>::try_from(&one.flatten(0, -1))?;
        Ok(image::postprocess(&values, lh as usize, lw as usize, lb, self.post)?)
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
