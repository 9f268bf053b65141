//! The zip container of `torch.save` (torch ≥ 1.6) and TorchScript:
//! `<archive>/data.pkl` plus one entry `<archive>/data/<key>` per storage.
//! torch stores entries uncompressed, so storages are handed out as ranges
//! of the memory map, without copying.

use std::io::{Cursor, Read};
use std::sync::Arc;

use memmap2::Mmap;
use zip::{CompressionMethod, ZipArchive};

use super::rebuild::Storages;
use crate::tensor::Bytes;

type Step<T> = std::result::Result<T, String>;

/// Deflate cannot expand data more than about 1032:1; a compressed entry
/// that claims more is a zip bomb.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// The memory map as the zip reader's byte source.
struct MapRef(Arc<Mmap>);

impl AsRef<[u8]> for MapRef {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub(super) struct TorchZip {
    map: Arc<Mmap>,
    archive: ZipArchive<Cursor<MapRef>>,
    /// `<archive>/`, the folder holding `data.pkl`.
    prefix: String,
}

/// True when the bytes start like a zip archive.
pub(super) fn looks_like_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

impl TorchZip {
    pub fn open(map: Arc<Mmap>) -> Step<TorchZip> {
        let archive = ZipArchive::new(Cursor::new(MapRef(map.clone())))
            .map_err(|e| format!("not a readable zip archive (truncated or damaged?): {e}"))?;
        // torch writes every entry under one top-level folder, named after the file.
        let pkl = archive
            .file_names()
            .find(|n| {
                n.strip_suffix("data.pkl")
                    .is_some_and(|dir| dir.is_empty() || dir.matches('/').count() == 1 && dir.ends_with('/'))
            })
            .ok_or("the zip archive has no `<archive>/data.pkl`, so it is not a torch.save or TorchScript file")?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        let mut zip = TorchZip { map, archive, prefix };
        if let Some(order) = zip.entry("byteorder")? {
            if order.as_slice() != b"little" {
                let order = String::from_utf8_lossy(order.as_slice()).into_owned();
                return Err(format!(
                    "`{}byteorder` says `{order}`; detris reads little-endian checkpoints only",
                    zip.prefix
                ));
            }
        }
        Ok(zip)
    }

    /// `<archive>/data.pkl`, the name to cite in messages.
    pub fn pickle_name(&self) -> String {
        format!("{}data.pkl", self.prefix)
    }

    pub fn pickle(&mut self) -> Step<Bytes> {
        self.entry("data.pkl")?.ok_or_else(|| "`data.pkl` vanished from the archive".into())
    }

    /// The bytes of `<archive>/<name>`, if the archive has it.
    fn entry(&mut self, name: &str) -> Step<Option<Bytes>> {
        let full = format!("{}{name}", self.prefix);
        let Some(index) = self.archive.index_for_name(&full) else { return Ok(None) };
        let damaged = |e: zip::result::ZipError| format!("entry `{full}` is damaged: {e}");
        let (start, stored, size, method) = {
            let f = self.archive.by_index_raw(index).map_err(damaged)?;
            (f.data_start(), f.compressed_size(), f.size(), f.compression())
        };
        let too_big = || format!("entry `{full}` is larger than this machine can address");
        let len = usize::try_from(size).map_err(|_| too_big())?;
        match method {
            CompressionMethod::Stored => {
                let start = usize::try_from(start).map_err(|_| too_big())?;
                let end =
                    start.checked_add(len).filter(|&e| e <= self.map.len() && stored == size).ok_or_else(|| {
                        format!(
                            "entry `{full}` runs past the end of the file ({} bytes): the file is truncated",
                            self.map.len()
                        )
                    })?;
                Ok(Some(Bytes::Mapped(self.map.clone(), start..end)))
            }
            CompressionMethod::Deflated => {
                if start.checked_add(stored).is_none_or(|end| end > self.map.len() as u64) {
                    return Err(format!("entry `{full}` runs past the end of the file: the file is truncated"));
                }
                if size > stored.saturating_mul(MAX_DEFLATE_RATIO).saturating_add(1024) {
                    return Err(format!(
                        "entry `{full}` claims to inflate {stored} bytes to {size}, beyond what deflate can do (a zip bomb)"
                    ));
                }
                let mut out = Vec::with_capacity(len);
                let f = self.archive.by_index(index).map_err(damaged)?;
                // One byte more than declared: an entry that inflates to more is caught, and the zip
                // reader reaches the end of the stream, where it checks the CRC.
                f.take(size.saturating_add(1))
                    .read_to_end(&mut out)
                    .map_err(|e| format!("entry `{full}` does not inflate: {e}"))?;
                if out.len() > len {
                    return Err(format!("entry `{full}` inflates to more than the {len} bytes it declares"));
                }
                if out.len() != len {
                    return Err(format!("entry `{full}` inflates to {} bytes, not the {len} it declares", out.len()));
                }
                Ok(Some(Bytes::Owned(out)))
            }
            other => Err(format!("entry `{full}` uses {other:?} compression, which detris does not read")),
        }
    }
}

impl Storages for TorchZip {
    fn storage(&mut self, key: &str) -> Step<Bytes> {
        // Keys are torch's decimal ids; anything else (`../x`, `a/b`) could
        // name an entry that is not a storage.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("its storage key `{key}` is not a plain name"));
        }
        let name = format!("data/{key}");
        self.entry(&name)?
            .ok_or_else(|| format!("it refers to storage `{}{name}`, which the archive does not contain", self.prefix))
    }
}
