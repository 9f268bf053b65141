//! The official DETRIS YAML configs (`config/<dataset>/DETRIS_*.yaml`): their
//! keys are accepted by `detris train`, command-line options win over them.
//! Sections (DATA, TRAIN, Distributed, TEST) are flattened; keys that only
//! matter to the Python launcher (GPUs, LMDB paths, workers) are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::config::DetrisConfig;

pub struct OfficialYaml {
    pub path: PathBuf,
    keys: BTreeMap<String, Value>,
}

impl OfficialYaml {
    pub fn read(path: &Path) -> Result<OfficialYaml> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let yaml: serde_norway::Value =
            serde_norway::from_str(&text).with_context(|| format!("{}: not valid YAML", path.display()))?;
        let json =
            serde_json::to_value(yaml).with_context(|| format!("{}: unsupported YAML content", path.display()))?;
        let Value::Object(sections) = json else { bail!("{}: expected sections of keys", path.display()) };
        let mut keys = BTreeMap::new();
        for (name, section) in sections {
            match section {
                Value::Object(m) => keys.extend(m),
                other => {
                    keys.insert(name, other);
                }
            }
        }
        Ok(OfficialYaml { path: path.to_path_buf(), keys })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.get(key).filter(|v| !v.is_null())
    }
    pub fn usize(&self, key: &str) -> Option<usize> {
        self.get(key)?.as_u64().map(|v| v as usize)
    }
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.as_f64()
    }
    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key)?.as_str().map(str::to_string)
    }
    pub fn list(&self, key: &str) -> Option<Vec<usize>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_u64().map(|v| v as usize)).collect()
    }

    /// The validation split, from `val_lmdb: .../<split>.lmdb` (RefCOCO+ configs name testB).
    pub fn val_split(&self) -> Option<String> {
        let p = self.string("val_lmdb")?;
        Path::new(&p).file_stem().map(|s| s.to_string_lossy().into_owned())
    }

    /// The prepared-layout root, from `mask_root: <root>/masks/<dataset>`.
    pub fn data_root(&self) -> Option<PathBuf> {
        let m = PathBuf::from(self.string("mask_root")?);
        m.parent()?.parent().map(Path::to_path_buf)
    }

    /// The model config the YAML describes (its key names are mapped in
    /// `weights::official`, the one place for foreign names).
    pub fn model_config(&self) -> Result<DetrisConfig> {
        let stem = self.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let c = crate::weights::official::config_from_yaml_keys(&self.keys, &stem);
        c.validate().with_context(|| format!("{}", self.path.display()))?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of the official `config/refcoco+/DETRIS_base.yaml` (keys as released).
    const REFCOCO_PLUS_BASE: &str = r#"
DATA:
  dataset: refcoco+
  train_lmdb: datasets/lmdb/refcoco+/train.lmdb
  train_split: train
  val_lmdb: datasets/lmdb/refcoco+/testB.lmdb
  val_split: testB
  mask_root: datasets/masks/refcoco+
TRAIN:
  clip_pretrain: pretrain/ViT-B-16.pt
  dino_pretrain: pretrain/dinov2_vitb14_reg4_pretrain.pth
  dino_name: dino-base
  input_size: 448
  word_len: 17
  word_dim: 512
  ladder_dim: 128
  nhead: 8
  multi_stage: 3
  stride: [1, 1, 1]
  vis_dim: 512
  fpn_in: [768, 768, 768]
  fpn_out: [256, 512, 1024]
  visual_adapter_dim: 128
  visual_adapter_layer: [1, 3, 5, 7, 9, 11]
  txt_adapter_dim: 64
  txtual_adapter_layer: [1, 3, 5, 7, 9, 11]
  output_dinov2: [4, 8]
  num_layers: 3
  num_head: 8
  dim_ffn: 512
  dropout: 0.1
  intermediate: False
  workers: 4
  epochs: 65
  milestones: [35, 55]
  base_lr: 0.0001
  lr_decay: 0.1
  lr_multi: 1
  batch_size: 32
  max_norm: 0.
  manual_seed: 0
Distributed:
  dist_url: tcp://localhost:3681
  sync_bn: True
TEST:
  test_split: val-test
  visualize: False
"#;

    #[test]
    fn official_yaml_gives_the_recipe_the_split_and_the_model() {
        let path = std::env::temp_dir().join(format!("DETRIS_base-{}.yaml", std::process::id()));
        std::fs::write(&path, REFCOCO_PLUS_BASE).unwrap();
        let y = OfficialYaml::read(&path).unwrap();
        assert_eq!(y.string("dataset").as_deref(), Some("refcoco+"));
        assert_eq!(y.val_split().as_deref(), Some("testB"));
        assert_eq!(y.data_root(), Some(PathBuf::from("datasets")));
        assert_eq!((y.usize("epochs"), y.list("milestones")), (Some(65), Some(vec![35, 55])));
        let c = y.model_config().unwrap();
        assert_eq!(c, DetrisConfig::detris_b());
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn broken_yaml_names_the_file() {
        let path = std::env::temp_dir().join(format!("broken-{}.yaml", std::process::id()));
        std::fs::write(&path, "DATA: [unclosed").unwrap();
        let e = OfficialYaml::read(&path).err().unwrap();
        assert!(format!("{e:#}").contains("not valid YAML"), "{e:#}");
        std::fs::remove_file(&path).ok();
    }
}
