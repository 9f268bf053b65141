//! The whole DETRIS model (the data flow of `docs/architecture.md`): text first, then vision with the word
//! features, neck, decoder, projector. The module tree is the checkpoint key
//! schema: `txt_backbone.`, `dinov2.`, `neck.`, `decoder.`, `proj.`.

use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::clip_text::ClipText;
use super::decoder::Decoder;
use super::dinov2::DinoV2;
use super::layers::Ctx;
use super::neck::Neck;
use super::projector::Projector;
use crate::config::DetrisConfig;
use crate::device::ExactF32;

/// Sentences per batch in [`Detris::forward_sentences`], for `tokens` image
/// tokens a sentence. In f32 on CPU a batch buys nothing (the matrix products
/// are already at the machine's f32 peak with one sentence) and costs memory,
/// so sentences run one after the other there, sharing the text-independent
/// blocks. In bf16 on CPU a small input's products are too small to keep the
/// bf16 units busy, and batching up to about 2k tokens a pass is faster per
/// sentence; at 448 (1029 tokens) a batch measured no faster and only took
/// memory. A GPU is under-used by one sentence (figures in docs/bench).
pub fn sentence_batch(device: Device, kind: Kind, tokens: i64) -> i64 {
    match (device, kind) {
        (Device::Cpu, Kind::Float | Kind::Double) => 1,
        (Device::Cpu, _) => (2048 / tokens.max(1)).clamp(1, 16),
        _ => 8,
    }
}

pub struct Detris {
    pub config: DetrisConfig,
    /// Every parameter and buffer, named as in the official state dict.
    pub vs: VarStore,
    pub text: ClipText,
    pub dino: DinoV2,
    pub neck: Neck,
    pub decoder: Decoder,
    pub proj: Projector,
    /// The token ids the weights know, when the file held a pruned vocabulary.
    pub known_token_ids: Option<Vec<i64>>,
    /// On CUDA: cuDNN's convolutions compute in true f32 while the model
    /// lives (forward, backward and steps alike), so that f32 on a GPU
    /// matches the official logits as closely as the CPU (held for its drop).
    _exact_f32: Option<ExactF32>,
}

impl std::fmt::Debug for Detris {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Detris({}, {:?}, {:?})", self.config.name, self.device(), self.kind())
    }
}

impl Detris {
    /// Builds the model with freshly initialised trainable parts (official
    /// init) and zeroed frozen backbones, to be filled by `weights`.
    pub fn new(config: DetrisConfig, device: Device) -> anyhow::Result<Detris> {
        Detris::new_in(config, device, Kind::Float)
    }

    /// As [`Detris::new`], the variables in `kind`: bf16 or f16 inference never holds an f32
    /// copy of its weights.
    pub fn new_in(config: DetrisConfig, device: Device, kind: Kind) -> anyhow::Result<Detris> {
        config.validate()?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind); // the kind of the variables made from here on
        let root = vs.root();
        let text = ClipText::new(&(&root / "txt_backbone"), &config);
        let dino = DinoV2::new(&(&root / "dinov2"), &config);
        let neck = Neck::new(&(&root / "neck"), &config);
        let decoder = Decoder::new(&(&root / "decoder"), &config);
        let proj = Projector::new(&(&root / "proj"), &config);
        let exact_f32 = device.is_cuda().then(ExactF32::hold).transpose()?;
        Ok(Detris { config, vs, text, dino, neck, decoder, proj, known_token_ids: None, _exact_f32: exact_f32 })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// img (B,3,S,S) normalised, ids (B,L) int64 → logits (B,1,4g,4g).
    pub fn forward(&self, img: &Tensor, ids: &Tensor, ctx: &Ctx) -> Tensor {
        let shared = self.dino.shared_tokens(img, ctx);
        self.forward_from_shared(shared, ids, ctx)
    }

    /// One image (1,3,S,S) and K sentences (K,L) → logits (K,1,4g,4g). The
    /// text-independent part of the image encoder runs once; the sentences
    /// run in batches of [`sentence_batch`].
    pub fn forward_sentences(&self, img: &Tensor, ids: &Tensor, ctx: &Ctx) -> Tensor {
        let tokens = self.config.image_tokens() as i64;
        self.forward_sentences_batched(img, ids, sentence_batch(self.device(), self.kind(), tokens), ctx)
    }

    /// [`Self::forward_sentences`] with `batch` sentences per pass.
    pub fn forward_sentences_batched(&self, img: &Tensor, ids: &Tensor, batch: i64, ctx: &Ctx) -> Tensor {
        assert!(batch > 0, "a batch holds at least one sentence");
        let shared = self.dino.shared_tokens(img, ctx);
        let k = ids.size()[0];
        let outs: Vec<Tensor> = (0..k)
            .step_by(batch as usize)
            .map(|start| {
                let n = batch.min(k - start);
                self.forward_from_shared(shared.repeat(n), &ids.narrow(0, start, n), ctx)
            })
            .collect();
        Tensor::cat(&outs, 0)
    }

    fn forward_from_shared(&self, shared: super::dinov2::SharedTokens, ids: &Tensor, ctx: &Ctx) -> Tensor {
        let ids = ids.to_kind(Kind::Int64);
        // id 0 is padding (and also the BPE token `!`, hidden too, as trained).
        let pad = ids.eq(0);
        let txt = self.text.forward(&ids, ctx);
        ctx.record("fusion.1", &txt.words);
        ctx.record("fusion.2", &txt.sentence);
        let taps = self.dino.forward_with_words(shared, &txt.words, ctx);
        let fq = self.neck.forward(&taps, &txt.sentence, ctx);
        ctx.record("neck", &fq);
        let fq = self.decoder.forward(&fq, &txt.words, &pad, ctx);
        let pred = self.proj.forward(&fq, &txt.sentence, ctx);
        ctx.record("proj", &pred);
        ctx.record("pred", &pred);
        pred
    }

    /// BCE-with-logits against the soft target (B,1,S',S') resized to the
    /// logits with nearest (floor) sampling, as the official training step.
    pub fn loss(logits: &Tensor, target: &Tensor) -> (Tensor, Tensor) {
        let (_, _, h, w) = logits.size4().unwrap();
        let t = if target.size()[2..] != [h, w] {
            target.upsample_nearest2d([h, w], None, None)
        } else {
            target.shallow_clone()
        };
        let loss = logits.binary_cross_entropy_with_logits::<Tensor>(&t, None, None, tch::Reduction::Mean);
        (loss, t)
    }

    /// Number of parameters that train and that stay frozen.
    pub fn parameter_counts(&self) -> (i64, i64) {
        let vars = self.vs.variables();
        let mut trainable = 0;
        let mut frozen = 0;
        for (name, t) in vars {
            if name.contains("running_") {
                continue;
            }
            if t.requires_grad() {
                trainable += t.numel() as i64;
            } else {
                frozen += t.numel() as i64;
            }
        }
        (trainable, frozen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_batch_only_where_it_measured_faster() {
        let tokens = |side: usize| DetrisConfig { input_size: side, ..DetrisConfig::detris_b() }.image_tokens() as i64;
        assert_eq!(tokens(448), 1029);
        for side in [112, 224, 448] {
            assert_eq!(sentence_batch(Device::Cpu, Kind::Float, tokens(side)), 1);
            assert_eq!(sentence_batch(Device::Cuda(0), Kind::BFloat16, tokens(side)), 8);
        }
        assert_eq!(sentence_batch(Device::Cpu, Kind::BFloat16, tokens(112)), 16);
        assert_eq!(sentence_batch(Device::Cpu, Kind::BFloat16, tokens(224)), 7);
        assert_eq!(sentence_batch(Device::Cpu, Kind::BFloat16, tokens(448)), 1);
    }
}
