//! The official DETRIS YAML configs (`config/<dataset>/DETRIS_*.yaml`), read
//! as its `utils/config.py` reads them: the sections (DATA, TRAIN, TEST) are
//! flattened into one key space, and `--opts KEY VALUE ...` overrides keys by
//! their last dotted component with Python-literal values. Every key is
//! either honoured or refused with its name and the reason; an unknown key
//! is an error. Without a file the keys hold the official DETRIS-B RefCOCO
//! recipe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::recipe::{Recipe, Schedule, DEFAULT_DATASET, DEFAULT_TRAIN_SPLIT, DEFAULT_VAL_SPLIT};
use crate::config::DetrisConfig;

/// What a key's value must be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Type {
    Usize,
    /// An int or a float (`max_norm: 0.`, `lr_multi: 1`).
    Float,
    Bool,
    Text,
    /// A path, or empty (`weight:`, `resume:`).
    OptText,
    UsizeList,
}

impl Type {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Type::Usize => v.as_u64().is_some(),
            Type::Float => v.as_f64().is_some_and(f64::is_finite),
            Type::Bool => v.is_boolean(),
            Type::Text => v.is_string(),
            Type::OptText => v.is_string() || v.is_null(),
            Type::UsizeList => v.as_array().is_some_and(|a| a.iter().all(|x| x.as_u64().is_some())),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Type::Usize => "a non-negative integer",
            Type::Float => "a number",
            Type::Bool => "True or False",
            Type::Text => "a string",
            Type::OptText => "a path or nothing",
            Type::UsizeList => "a list of non-negative integers",
        }
    }
}

/// Every key of the released configs: (section, name, type, what detris does with it).
const KEYS: &[(&str, &str, Type, &str)] = &[
    ("DATA", "dataset", Type::Text, "the data set under <data>/anns/ and <data>/masks/"),
    ("DATA", "train_lmdb", Type::Text, LMDB_NOTE),
    ("DATA", "train_split", Type::Text, "the training split"),
    ("DATA", "val_lmdb", Type::Text, LMDB_NOTE),
    ("DATA", "val_split", Type::Text, "the split that selects best_model (RefCOCO+ configs: testB)"),
    ("DATA", "mask_root", Type::Text, "<data>/masks/<dataset>: gives the default data root <data>"),
    ("TRAIN", "visual_adapter_dim", Type::Usize, "model: DenseAligner width"),
    ("TRAIN", "visual_adapter_layer", Type::UsizeList, "model: DINOv2 blocks with a DenseAligner"),
    ("TRAIN", "txt_adapter_dim", Type::Usize, "model: TextAdapter width"),
    ("TRAIN", "txtual_adapter_layer", Type::UsizeList, "model: CLIP text blocks with a TextAdapter"),
    ("TRAIN", "clip_pretrain", Type::Text, "the pretrained CLIP file (--clip wins)"),
    ("TRAIN", "dino_pretrain", Type::Text, "the pretrained DINOv2 file (--dinov2 wins)"),
    ("TRAIN", "dino_layers", Type::Usize, "model: DINOv2 depth"),
    ("TRAIN", "output_dinov2", Type::UsizeList, "model: tapped DINOv2 blocks (the final norm is added)"),
    ("TRAIN", "dino_name", Type::Text, "model: dino-base (ViT-B/14) or dinov2-large (ViT-L/14)"),
    ("TRAIN", "model_name", Type::Text, "CLIP-b-16, the only text tower of DETRIS"),
    ("TRAIN", "input_size", Type::Usize, "model: input side in pixels"),
    ("TRAIN", "word_len", Type::Usize, "model: tokens per sentence"),
    ("TRAIN", "word_dim", Type::Usize, "model: CLIP text embedding width E"),
    ("TRAIN", "ladder_dim", Type::Usize, IGNORED_NOTE),
    ("TRAIN", "nhead", Type::Usize, IGNORED_NOTE),
    ("TRAIN", "multi_stage", Type::Usize, IGNORED_NOTE),
    ("TRAIN", "stride", Type::UsizeList, "must be [1, 1, 1], the only strides the official neck is used with"),
    ("TRAIN", "vis_dim", Type::Usize, "model: neck/decoder width C"),
    ("TRAIN", "fpn_in", Type::UsizeList, "must be the DINOv2 width three times"),
    ("TRAIN", "fpn_out", Type::UsizeList, IGNORED_NOTE),
    (
        "TRAIN",
        "sync_bn",
        Type::Bool,
        "SyncBatchNorm over the ranks of a data-parallel run (--sync-bn wins); one process sees the whole batch anyway",
    ),
    ("TRAIN", "num_layers", Type::Usize, "model: decoder layers"),
    ("TRAIN", "num_head", Type::Usize, "model: decoder heads"),
    ("TRAIN", "dim_ffn", Type::Usize, "model: decoder feed-forward width"),
    ("TRAIN", "dropout", Type::Float, "model: dropout probability"),
    ("TRAIN", "intermediate", Type::Bool, "must be False: the decoder's intermediate outputs are not used"),
    ("TRAIN", "workers", Type::Usize, "data loading threads (--workers wins)"),
    ("TRAIN", "workers_val", Type::Usize, "not used by train: validation loads with the training threads"),
    ("TRAIN", "epochs", Type::Usize, "recipe: epochs"),
    ("TRAIN", "milestones", Type::UsizeList, "recipe: MultiStepLR milestones"),
    ("TRAIN", "start_epoch", Type::Usize, "recipe: the first epoch (0-based) of a run that is not resumed"),
    ("TRAIN", "batch_size", Type::Usize, "recipe: training batch"),
    ("TRAIN", "batch_size_val", Type::Usize, "recipe: validation batch"),
    ("TRAIN", "base_lr", Type::Float, "recipe: the head's learning rate"),
    ("TRAIN", "lr_decay", Type::Float, "recipe: MultiStepLR gamma"),
    ("TRAIN", "lr_multi", Type::Float, "recipe: the backbone adapters learn at lr_multi × base_lr"),
    ("TRAIN", "weight_decay", Type::Float, "recipe: Adam's L2 weight decay (added to the gradient)"),
    ("TRAIN", "max_norm", Type::Float, "recipe: gradient clipping by total norm (0 = none)"),
    ("TRAIN", "manual_seed", Type::Usize, "recipe: seed"),
    ("TRAIN", "print_freq", Type::Usize, "steps between log lines"),
    ("TRAIN", "exp_name", Type::Text, "the run folder is <output_folder>/<exp_name> (--out wins)"),
    ("TRAIN", "output_folder", Type::Text, "the run folder is <output_folder>/<exp_name> (--out wins)"),
    ("TRAIN", "save_freq", Type::Usize, "last_model is written every save_freq epochs (and after the last)"),
    ("TRAIN", "weight", Type::OptText, "initial weights (a .pth or .safetensors; --checkpoint wins)"),
    ("TRAIN", "resume", Type::OptText, "a last_model.pth (or last.safetensors) to continue (--resume-from wins)"),
    ("TRAIN", "evaluate", Type::Bool, "validate after every epoch (False: no validation, no best_model)"),
    ("TEST", "test_split", Type::Text, "the split `detris eval` reports (not used by train)"),
    ("TEST", "test_lmdb", Type::Text, LMDB_NOTE),
    ("TEST", "visualize", Type::Bool, "saving masks is `detris eval --save-masks` (not used by train)"),
];

const LMDB_NOTE: &str = "LMDB path, not read: detris reads the prepared layout (<data>/anns/<dataset>/<split>.json, \
                         <data>/masks/<dataset>/, <data>/images/) that `detris data prepare` writes; the split is \
                         named by train_split / val_split / test_split";
const IGNORED_NOTE: &str = "logged but never used by the official model either";

fn key_spec(key: &str) -> Option<&'static (&'static str, &'static str, Type, &'static str)> {
    KEYS.iter().find(|k| k.1 == key)
}

/// The keys of an official config, flattened as `utils/config.py` does.
#[derive(Clone, Debug)]
pub struct YamlConfig {
    /// The file, or `None` for the built-in DETRIS-B RefCOCO recipe.
    pub path: Option<PathBuf>,
    keys: BTreeMap<String, Value>,
}

impl YamlConfig {
    /// The official DETRIS-B RefCOCO recipe (`config/refcoco/DETRIS_base.yaml`).
    pub fn detris_b_refcoco() -> YamlConfig {
        // The recipe's numbers from their one place, the recipe's defaults.
        let (s, r) = (Schedule::default(), Recipe::default());
        // Three literals: one would exceed the macro recursion limit.
        let parts = [
            json!({
                "dataset": DEFAULT_DATASET, "train_lmdb": "datasets/lmdb/refcoco/train.lmdb",
                "train_split": DEFAULT_TRAIN_SPLIT, "val_lmdb": "datasets/lmdb/refcoco/val.lmdb",
                "val_split": DEFAULT_VAL_SPLIT,
                "mask_root": "datasets/masks/refcoco", "test_split": "val-test",
                "test_lmdb": "datasets/lmdb/refcoco/val.lmdb", "visualize": false,
            }),
            json!({
                "visual_adapter_dim": 128, "visual_adapter_layer": [1, 3, 5, 7, 9, 11], "txt_adapter_dim": 64,
                "txtual_adapter_layer": [1, 3, 5, 7, 9, 11], "clip_pretrain": "pretrain/ViT-B-16.pt",
                "dino_pretrain": "pretrain/dinov2_vitb14_reg4_pretrain.pth", "dino_layers": 12,
                "output_dinov2": [4, 8], "dino_name": "dino-base", "model_name": "CLIP-b-16", "input_size": 448,
                "word_len": 17, "word_dim": 512, "ladder_dim": 128, "nhead": 8, "multi_stage": 3,
                "stride": [1, 1, 1], "vis_dim": 512, "fpn_in": [768, 768, 768], "fpn_out": [256, 512, 1024],
                "sync_bn": true, "num_layers": 3, "num_head": 8, "dim_ffn": 512, "dropout": 0.1,
                "intermediate": false,
            }),
            json!({
                "workers": 32, "workers_val": 16, "epochs": s.epochs, "milestones": s.milestones,
                "start_epoch": r.start_epoch, "batch_size": s.batch_size, "batch_size_val": r.batch_size_val,
                "base_lr": s.base_lr, "lr_decay": s.lr_decay, "lr_multi": r.lr_multi,
                "weight_decay": r.weight_decay, "max_norm": r.max_norm, "manual_seed": s.seed,
                "print_freq": r.print_freq, "exp_name": "DETRIS_base", "output_folder": "exp/refcoco",
                "save_freq": r.save_freq, "weight": null, "resume": null, "evaluate": r.evaluate,
            }),
        ];
        let mut map = serde_json::Map::new();
        for part in parts {
            if let Value::Object(m) = part {
                map.extend(m);
            }
        }
        YamlConfig { path: None, keys: map.into_iter().collect() }
    }

    /// Reads a config file: every key must be one of the official ones, with
    /// a value of its type.
    pub fn read(path: &Path) -> Result<YamlConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        let yaml: serde_norway::Value =
            serde_norway::from_str(&text).with_context(|| format!("{}: not valid YAML", path.display()))?;
        let json =
            serde_json::to_value(yaml).with_context(|| format!("{}: unsupported YAML content", path.display()))?;
        let Value::Object(sections) = json else {
            bail!("{}: expected sections of keys (DATA:, TRAIN:, TEST:)", path.display())
        };
        let mut keys = BTreeMap::new();
        for (section, entries) in sections {
            let Value::Object(entries) = entries else {
                bail!("{}: `{section}` is not a section of keys", path.display())
            };
            for (key, value) in entries {
                check_key(&key, &value).with_context(|| format!("{}: {section}.{key}", path.display()))?;
                keys.insert(key, value);
            }
        }
        Ok(YamlConfig { path: Some(path.to_path_buf()), keys })
    }

    /// `--opts KEY VALUE ...` as `merge_cfg_from_list`: the key's last dotted
    /// component must be a key of the config, the value is a Python literal
    /// (anything else stays a string) of the key's type. (Beyond the
    /// official: an int may replace a float, and an empty key such as
    /// `weight` may be set.)
    pub fn merge_opts(&mut self, opts: &[String]) -> Result<()> {
        if opts.len() % 2 != 0 {
            bail!("--opts takes KEY VALUE pairs; `{}` has no value", opts.last().map(String::as_str).unwrap_or(""));
        }
        for pair in opts.chunks(2) {
            let (full_key, text) = (&pair[0], &pair[1]);
            let key = full_key.rsplit('.').next().unwrap_or(full_key);
            if key_spec(key).is_none() || !self.keys.contains_key(key) {
                bail!("--opts {full_key}: no such key in the config (the official keys are {})", key_list());
            }
            // A tuple becomes a list, as `_check_and_coerce_cfg_value_type` casts it.
            let value = python_literal(text).unwrap_or_else(|| Value::String(text.clone()));
            check_key(key, &value).with_context(|| format!("--opts {full_key} {text}"))?;
            self.keys.insert(key.to_string(), value);
        }
        Ok(())
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
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    pub fn string(&self, key: &str) -> Option<String> {
        self.get(key)?.as_str().map(str::to_string)
    }
    pub fn list(&self, key: &str) -> Option<Vec<usize>> {
        self.get(key)?.as_array()?.iter().map(|v| v.as_u64().map(|v| v as usize)).collect()
    }

    /// `<file>: <key>`, where a message says what is wrong.
    fn at(&self, key: &str) -> String {
        match &self.path {
            Some(p) => format!("{}: {key}", p.display()),
            None => key.to_string(),
        }
    }

    /// The prepared-layout root, from `mask_root: <root>/masks/<dataset>`.
    pub fn data_root(&self) -> Option<PathBuf> {
        let m = PathBuf::from(self.string("mask_root")?);
        m.parent()?.parent().map(Path::to_path_buf)
    }

    /// `<output_folder>/<exp_name>`, the official run folder.
    pub fn output_dir(&self) -> Option<PathBuf> {
        Some(PathBuf::from(self.string("output_folder")?).join(self.string("exp_name")?))
    }

    /// Checks what detris cannot do differently (strides, intermediate
    /// outputs, the text tower) and returns the
    /// keys that have no effect on a detris run, with the reason.
    pub fn check_and_notes(&self) -> Result<BTreeMap<String, String>> {
        let mut notes = BTreeMap::new();
        let here = |key: &str| self.at(key);
        if let Some(s) = self.list("stride") {
            if s.iter().any(|&x| x != 1) {
                bail!("{}: {s:?} is refused: detris implements the neck with stride 1 only", here("stride"));
            }
        }
        if self.bool("intermediate") == Some(true) {
            bail!("{}: True is refused: the decoder's intermediate outputs are not implemented", here("intermediate"));
        }
        if let Some(name) = self.string("model_name") {
            if name != "CLIP-b-16" {
                bail!("{}: `{name}` is refused: DETRIS uses the CLIP ViT-B/16 text tower only", here("model_name"));
            }
        }
        for (_, key, _, why) in KEYS {
            if self.keys.contains_key(*key)
                && (why.starts_with("LMDB") || *why == IGNORED_NOTE || why.contains("not used by train"))
            {
                notes.insert(key.to_string(), why.to_string());
            }
        }
        Ok(notes)
    }

    /// The model the config describes: the DINOv2 its `dino_name` names,
    /// with its adapter layers and dims, taps, word length and head sizes
    /// (the key → field tables are in `weights::config_files`, beside the
    /// other config readers); what detris cannot build is refused here, by key.
    pub fn model_config(&self) -> Result<DetrisConfig> {
        let here = |key: &str| self.at(key);
        if let Some(other) = self.string("dino_name").filter(|n| n != "dino-base" && n != "dinov2-large") {
            bail!("{}: `{other}` is refused: the DINOv2 models are dino-base and dinov2-large", here("dino_name"));
        }
        let c = crate::weights::config_files::config_from_yaml_keys(&self.keys);
        if let Some(f) = self.list("fpn_in") {
            if f.len() != 3 || f.iter().any(|&w| w != c.dino_dim) {
                bail!("{}: {f:?} is refused: it must be the DINOv2 width {} three times", here("fpn_in"), c.dino_dim);
            }
        }
        c.validate().with_context(|| here("the model"))?;
        Ok(c)
    }
}

/// The value of `key` has its type (an unknown key is an error listing the known ones).
fn check_key(key: &str, value: &Value) -> Result<()> {
    let Some((_, _, ty, _)) = key_spec(key) else {
        bail!("unknown key `{key}` (not in the official configs; the keys are {})", key_list())
    };
    if !ty.accepts(value) {
        bail!("`{key}` must be {}, not {value}", ty.describe());
    }
    Ok(())
}

fn key_list() -> String {
    KEYS.iter().map(|k| k.1).collect::<Vec<_>>().join(", ")
}

/// A Python literal as `ast.literal_eval` reads it (numbers, strings,
/// True/False/None, lists and tuples of them), or `None` when the text is not
/// one (`utils/config.py` then keeps the text as a string).
pub fn python_literal(text: &str) -> Option<Value> {
    let mut p = Literal { s: text.trim().as_bytes(), i: 0 };
    let v = p.value()?;
    p.ws();
    (p.i == p.s.len()).then_some(v)
}

struct Literal<'a> {
    s: &'a [u8],
    i: usize,
}

impl Literal<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }
    fn value(&mut self) -> Option<Value> {
        self.ws();
        match *self.s.get(self.i)? {
            b'[' => self.sequence(b']'),
            b'(' => self.sequence(b')'),
            b'\'' | b'"' => self.string(),
            b'-' | b'+' | b'.' | b'0'..=b'9' => self.number(),
            _ => {
                let start = self.i;
                while self.s.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Some(Value::Bool(true)),
                    b"False" => Some(Value::Bool(false)),
                    b"None" => Some(Value::Null),
                    _ => None,
                }
            }
        }
    }
    fn sequence(&mut self, close: u8) -> Option<Value> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            if self.s.get(self.i) == Some(&close) {
                self.i += 1;
                return Some(Value::Array(items));
            }
            items.push(self.value()?);
            self.ws();
            match *self.s.get(self.i)? {
                b',' => self.i += 1,
                c if c == close => {}
                _ => return None,
            }
        }
    }
    fn string(&mut self) -> Option<Value> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            match c {
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                }
                c if c == quote => return String::from_utf8(out).ok().map(Value::String),
                c => out.push(c),
            }
        }
        None
    }
    fn number(&mut self) -> Option<Value> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_alphanumeric() || b".+-_".contains(c)) {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).ok()?.replace('_', "");
        if let Ok(i) = text.parse::<i64>() {
            return Some(json!(i));
        }
        let is_float = text.bytes().all(|c| c.is_ascii_digit() || b".eE+-".contains(&c));
        text.parse::<f64>().ok().filter(|f| is_float && f.is_finite()).map(|f| json!(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_parse_as_literal_eval() {
        assert_eq!(python_literal("1e-5"), Some(json!(1e-5)));
        assert_eq!(python_literal("0."), Some(json!(0.0)));
        assert_eq!(python_literal(".5"), Some(json!(0.5)));
        assert_eq!(python_literal("-3"), Some(json!(-3)));
        assert_eq!(python_literal("[35, 55]"), Some(json!([35, 55])));
        assert_eq!(python_literal("(1,)"), Some(json!([1])));
        assert_eq!(python_literal("True"), Some(json!(true)));
        assert_eq!(python_literal("None"), Some(Value::Null));
        assert_eq!(python_literal("'exp/x'"), Some(json!("exp/x")));
        // Not literals: kept as text by the caller, as utils/config.py does.
        assert_eq!(python_literal("exp/refcoco"), None);
        assert_eq!(python_literal("refcoco+"), None);
        assert_eq!(python_literal("[1, 2"), None);
    }

    #[test]
    fn opts_override_by_last_component_with_type_checks() {
        let mut y = YamlConfig::detris_b_refcoco();
        y.merge_opts(&["TRAIN.base_lr".into(), "2e-4".into(), "milestones".into(), "[10]".into()]).unwrap();
        assert_eq!((y.f64("base_lr"), y.list("milestones")), (Some(2e-4), Some(vec![10])));
        y.merge_opts(&["TRAIN.weight".into(), "w.pth".into(), "DATA.dataset".into(), "refcoco+".into()]).unwrap();
        assert_eq!((y.string("weight"), y.string("dataset")), (Some("w.pth".into()), Some("refcoco+".into())));
        let e = y.merge_opts(&["TRAIN.epochs".into(), "many".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("epochs"), "{e:#}");
        let e = y.merge_opts(&["TRAIN.nonsense".into(), "1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("TRAIN.nonsense"), "{e:#}");
        assert!(y.merge_opts(&["TRAIN.epochs".into()]).is_err());
    }

    #[test]
    fn the_built_in_recipe_is_detris_b() {
        let y = YamlConfig::detris_b_refcoco();
        for (_, key, ty, _) in KEYS {
            assert!(ty.accepts(&y.keys[*key]) || y.keys[*key].is_null(), "{key}");
        }
        assert_eq!(y.keys.len(), KEYS.len());
        assert_eq!(y.model_config().unwrap(), DetrisConfig::detris_b());
        assert_eq!((y.usize("epochs"), y.list("milestones")), (Some(65), Some(vec![35, 55])));
        assert!(y.check_and_notes().unwrap().contains_key("train_lmdb"));
    }
}
