//! The options every command that loads a model shares.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use detris::device::{DeviceArg, Precision};
use detris::train::yaml_config::YamlConfig;
use detris::weights::{self, ConfigChoice, WeightFiles};
use detris::Detris;

#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Weights: an official DETRIS .pth or a detris .safetensors file
    /// (default: the model that ships with detris).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Pretrained DINOv2 .pth (with --clip: start from the backbones).
    #[arg(long)]
    pub dinov2: Option<PathBuf>,
    /// OpenAI CLIP TorchScript archive (ViT-B-16.pt).
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// A config JSON (detris or fixture format) for what the shapes cannot tell.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A named variant: detris-b, detris-l, detris-l-mixed.
    #[arg(long)]
    pub variant: Option<String>,
    /// Override the word length (17; 22 for RefCOCOg-umd models).
    #[arg(long)]
    pub word_len: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceArg,
    /// CPU threads (0 = libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// A config built by the command itself (from an official YAML file).
    #[arg(skip)]
    pub inline: Option<detris::DetrisConfig>,
    /// An input size set by the command itself (an official YAML's `input_size`).
    #[arg(skip)]
    pub input_size: Option<usize>,
}

/// What `eval`, `segment` and `serve` share: the model, its inference precision and the
/// official test YAML (`test.py --config`).
#[derive(Args)]
pub struct InferenceArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub precision: InferencePrecision,
    #[command(flatten)]
    pub yaml: TestYaml,
}

/// `--yaml` of the commands that run a trained model (eval, segment, serve).
#[derive(Args, Clone, Debug)]
pub struct TestYaml {
    /// An official DETRIS YAML config, read as the official `test.py --config` reads it:
    /// its input_size and word_len (--word-len wins); with no --checkpoint, the weights
    /// test.py loads (<output_folder>/<exp_name>/best_model.pth, built from the config's
    /// model) when that file exists. eval also takes its test_split, dataset, data root
    /// (mask_root) and visualize (into <output_folder>/<exp_name>/vis).
    #[arg(long)]
    pub yaml: Option<PathBuf>,
}

impl TestYaml {
    /// The config file, read (unknown keys and bad values are usage errors).
    pub fn read(&self) -> Result<Option<YamlConfig>> {
        let Some(path) = &self.yaml else { return Ok(None) };
        YamlConfig::read(path).map(Some).map_err(|e| super::usage(format!("--yaml: {e:#}")))
    }

    /// Reads the config and applies its model part to `model` (see [`ModelArgs::apply_yaml`]).
    pub fn apply(&self, model: &mut ModelArgs) -> Result<Option<YamlConfig>> {
        let y = self.read()?;
        if let Some(y) = &y {
            model.apply_yaml(y)?;
        }
        Ok(y)
    }
}

/// `--precision` of the commands that only run the model forward.
#[derive(Args, Clone, Debug)]
pub struct InferencePrecision {
    /// f32; bf16 (CPU or CUDA) or f16 (CUDA): weights and activations in
    /// half precision, half the memory and, with bf16 matrix units, faster;
    /// int8 (CPU): the backbones' frozen linear layers in int8 (oneDNN), the
    /// rest in bf16; never chosen by auto;
    /// auto: bf16 where the hardware has bf16 matrix units, else f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
}

impl ModelArgs {
    /// How the config is chosen (an unknown `--variant` is a usage error).
    pub fn config_choice(&self) -> Result<ConfigChoice> {
        if let Some(v) = &self.variant {
            detris::DetrisConfig::variant(v).map_err(|e| super::usage(e.to_string()))?;
        }
        Ok(ConfigChoice {
            inline: self.inline.clone(),
            config: self.config.clone(),
            variant: self.variant.clone(),
            word_len: self.word_len,
            input_size: self.input_size,
        })
    }

    /// What the official `test.py --config` takes of a YAML for the model: `input_size` and
    /// `word_len` (an option given here wins), and, without `--checkpoint`, its run's
    /// `best_model.pth` with the config's model when that file exists.
    pub fn apply_yaml(&mut self, y: &YamlConfig) -> Result<()> {
        self.input_size = self.input_size.or(y.usize("input_size"));
        self.word_len = self.word_len.or(y.usize("word_len"));
        let best = y.output_dir().map(|d| d.join("best_model.pth")).filter(|p| p.is_file());
        if let (None, Some(best)) = (&self.checkpoint, best) {
            eprintln!("--yaml: the weights are {} (as test.py loads them)", best.display());
            self.checkpoint = Some(best);
            if self.config.is_none() && self.variant.is_none() {
                self.inline = Some(y.model_config().map_err(|e| super::usage(format!("--yaml: {e:#}")))?);
            }
        }
        Ok(())
    }

    /// The model in f32.
    pub fn load(&self) -> Result<Detris> {
        self.load_in(Precision::F32)
    }

    /// The model with its floating-point weights in `precision` (`auto` resolved for the
    /// device), its frozen linear layers packed where the precision asks for it.
    pub fn load_in(&self, precision: Precision) -> Result<Detris> {
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let device = self.device.open().map_err(|e| super::usage(e.to_string()))?;
        let precision = precision.for_inference(device).map_err(|e| super::usage(e.to_string()))?;
        let files =
            WeightFiles { checkpoint: self.checkpoint.clone(), dinov2: self.dinov2.clone(), clip: self.clip.clone() };
        weights::load_for_inference(&files, &self.config_choice()?, device, precision)
    }
}
