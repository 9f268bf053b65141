//! Writes `torch.save` zip archives: `<archive>/data.pkl` (a protocol-2
//! pickle whose tensors are `torch._utils._rebuild_tensor_v2` calls on
//! persistent-id storages), `<archive>/data/<key>` (each storage's raw
//! little-endian bytes, 64-byte aligned), `.format_version`,
//! `.storage_alignment`, `byteorder`, `version` and `.data/serialization_id`,
//! in the order torch writes them. Only globals that
//! `torch.load(weights_only=True)` allows are named.

use std::io::Write;
use std::path::{Path, PathBuf};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::error::{Error, Result};
use crate::pickle::writer::{to_pickle, PickleValue};
use crate::tensor::{DType, RawTensor};

/// torch aligns every storage record to this many bytes.
const ALIGNMENT: u16 = 64;

/// Collects the tensors of a value tree while it is built; [`TorchSave::write`]
/// stores them.
#[derive(Default)]
pub struct TorchSave {
    storages: Vec<RawTensor>,
}

/// `torch.<Name>Storage` of a dtype.
fn storage_class(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FloatStorage",
        DType::F16 => "HalfStorage",
        DType::F64 => "DoubleStorage",
        DType::I64 => "LongStorage",
        DType::I32 => "IntStorage",
        DType::I16 => "ShortStorage",
        DType::I8 => "CharStorage",
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
        DType::BF16 => "BFloat16Storage",
    }
}

fn tuple_of(dims: &[usize]) -> PickleValue {
    PickleValue::Tuple(dims.iter().map(|&d| PickleValue::Int(d as i64)).collect())
}

impl TorchSave {
    pub fn new() -> TorchSave {
        TorchSave::default()
    }

    /// The pickled form of a dense tensor, as torch writes a CPU tensor that
    /// does not require grad: `_rebuild_tensor_v2(('storage', torch.XStorage,
    /// '<key>', 'cpu', numel), 0, size, contiguous stride, False,
    /// OrderedDict())`. Storage keys count up in the order tensors are added,
    /// as torch numbers them in pickling order.
    pub fn tensor(&mut self, t: RawTensor) -> PickleValue {
        let key = self.storages.len().to_string();
        let mut stride = vec![1usize; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            stride[i] = stride[i + 1] * t.shape[i + 1];
        }
        let pid = PickleValue::Tuple(vec![
            PickleValue::str("storage"),
            PickleValue::Global("torch".into(), storage_class(t.dtype).into()),
            PickleValue::str(key),
            PickleValue::str("cpu"),
            PickleValue::Int(t.numel() as i64),
        ]);
        let value = PickleValue::call(
            "torch._utils",
            "_rebuild_tensor_v2",
            vec![
                PickleValue::PersistentId(Box::new(pid)),
                PickleValue::Int(0),
                tuple_of(&t.shape),
                tuple_of(&stride),
                PickleValue::Bool(false),
                PickleValue::call("collections", "OrderedDict", vec![]),
            ],
        );
        self.storages.push(t);
        value
    }

    /// Writes the archive atomically (a temporary sibling, fsync, rename).
    /// The folder inside the zip is named after the file, as torch names it.
    pub fn write(self, path: &Path, root: &PickleValue) -> Result<()> {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let archive = if !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
            stem
        } else {
            "archive".to_string()
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let written = self.write_zip(&tmp, &archive, root);
        let renamed = written.and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if renamed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        renamed
    }

    fn write_zip(self, tmp: &Path, archive: &str, root: &PickleValue) -> Result<()> {
        let io = |e: std::io::Error| Error::io(tmp, e);
        let zip_err = |e: zip::result::ZipError| Error::invalid(tmp, format!("cannot write the zip archive: {e}"));
        let file = std::fs::File::create(tmp).map_err(io)?;
        let mut zip = ZipWriter::new(std::io::BufWriter::new(file));
        let options = |len: usize| {
            SimpleFileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .with_alignment(ALIGNMENT)
                .large_file(len as u64 >= u32::MAX as u64)
        };
        let entry = |zip: &mut ZipWriter<_>, name: &str, bytes: &[u8]| -> Result<()> {
            zip.start_file(format!("{archive}/{name}"), options(bytes.len())).map_err(zip_err)?;
            zip.write_all(bytes).map_err(io)
        };
        entry(&mut zip, "data.pkl", &to_pickle(root))?;
        entry(&mut zip, ".format_version", b"1")?;
        entry(&mut zip, ".storage_alignment", ALIGNMENT.to_string().as_bytes())?;
        entry(&mut zip, "byteorder", b"little")?;
        for (key, t) in self.storages.iter().enumerate() {
            entry(&mut zip, &format!("data/{key}"), t.bytes())?;
        }
        entry(&mut zip, "version", b"3\n")?;
        entry(&mut zip, ".data/serialization_id", serialization_id().as_bytes())?;
        let mut out = zip.finish().map_err(zip_err)?;
        out.flush().map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)
    }
}

/// 40 decimal digits, as torch writes (a random id of this save).
fn serialization_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..40).map(|_| char::from(b'0' + rng.gen_range(0..10u8))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::Value;

    #[test]
    fn a_written_archive_reads_back_with_its_tensors() {
        let dir = std::env::temp_dir().join(format!("detris-torch-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ckpt.pth");
        let mut save = TorchSave::new();
        let a = RawTensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = RawTensor::from_i64(vec![], &[7]).unwrap();
        let sd = PickleValue::Dict(vec![
            (PickleValue::str("module.a"), save.tensor(a.clone())),
            (PickleValue::str("module.n"), save.tensor(b.clone())),
        ]);
        let root = PickleValue::dict([("epoch", PickleValue::Int(3)), ("state_dict", sd)]);
        save.write(&path, &root).unwrap();
        let ckpt = crate::torch_file::load_checkpoint(&path).unwrap();
        // Names as stored (the detris crate strips `module.` where it maps foreign names).
        assert_eq!(ckpt.tensors["module.a"].to_f32_vec(), a.to_f32_vec());
        let (a_shape, n) = (ckpt.tensors["module.a"].shape.clone(), ckpt.tensors["module.n"].to_i64_vec());
        assert_eq!((a_shape, n), (vec![2, 3], vec![7]));
        assert_eq!(ckpt.metadata["epoch"], Value::Int(3));
        let (tree, mut tensors) = crate::torch_file::load_tree(&path).unwrap();
        let n = tree.get("state_dict").and_then(|s| s.get("module.n")).unwrap();
        assert_eq!(tensors.tensor(n).unwrap().unwrap().to_i64_vec(), vec![7]);
        // Storage records start on 64-byte boundaries, as torch aligns them.
        let bytes = std::fs::read(&path).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
        let start = zip.by_name("ckpt/data/0").unwrap().data_start();
        assert_eq!(start % 64, 0);
        assert_eq!(zip.file_names().filter(|n| n.starts_with("ckpt/")).count(), zip.len());
        std::fs::remove_dir_all(&dir).ok();
    }
}
