//! What the hostile-file and regression tests share: time and memory bounds
//! on a call ([`bounded`], with a counting global allocator), and writers of
//! pickles, torch zips, legacy `torch.save` files and REFER folders built
//! byte by byte.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

// ---------------------------------------------------------------------------
// Bounds: time by a timed join, memory by a per-thread counting allocator.

/// Generous: every case here takes milliseconds in a release build.
pub const TIME_LIMIT: Duration = Duration::from_secs(60);
pub const MB: usize = 1 << 20;

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(n: usize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(n);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn shrank(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(n)));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` on a fresh thread; fails if it panics, runs past [`TIME_LIMIT`],
/// or if the thread's live heap ever exceeds `max_bytes`.
pub fn bounded<T: Send + 'static>(what: &str, max_bytes: usize, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(what.to_string())
        .stack_size(8 * MB)
        .spawn(move || {
            LIVE.set(0);
            PEAK.set(0);
            let out = f();
            let _ = tx.send((out, PEAK.get()));
        })
        .unwrap();
    match rx.recv_timeout(TIME_LIMIT) {
        Ok((out, peak)) => {
            assert!(peak <= max_bytes, "{what}: the heap grew to {peak} bytes, over the bound of {max_bytes}");
            out
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: still running after {TIME_LIMIT:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: the reader panicked"),
    }
}

/// The error of a call that must fail, within the bounds; it must contain
/// every string of `want`.
pub fn refused<T: std::fmt::Debug + Send + 'static>(
    what: &str,
    max_bytes: usize,
    want: &[&str],
    f: impl FnOnce() -> detris_io::Result<T> + Send + 'static,
) -> String {
    let msg = match bounded(what, max_bytes, f) {
        Ok(v) => panic!("{what}: accepted, giving {v:?}"),
        Err(e) => e.to_string(),
    };
    for w in want {
        assert!(msg.contains(w), "{what}: the error does not say `{w}`: {msg}");
    }
    msg
}

/// A fresh folder for this test's files, inside the target directory.
pub fn scratch(test: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(module_path!().split("::").next().unwrap_or("io")).join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn show(p: &Path) -> String {
    p.display().to_string()
}

// ---------------------------------------------------------------------------
// Hand-built pickles and containers.

/// Writes pickle opcodes (protocol 2 unless the caller starts otherwise).
#[derive(Clone)]
pub struct Pickle(pub Vec<u8>);

impl Pickle {
    pub fn new() -> Self {
        Pickle(vec![0x80, 2])
    }
    pub fn raw() -> Self {
        Pickle(Vec::new())
    }
    pub fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    pub fn int(self, i: i64) -> Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    /// LONG1 with `n` bytes of 0x7f...: an integer far beyond i64.
    pub fn big_int(self, n: u8) -> Self {
        let mut bytes = vec![0xffu8; usize::from(n)];
        bytes[usize::from(n) - 1] = 0x7f;
        self.op(&[0x8a, n]).op(&bytes)
    }
    pub fn ints(self, values: &[i64]) -> Self {
        values.iter().fold(self.op(b"("), |p, &v| p.int(v)).op(b"t")
    }
    /// `('storage', torch.<class>, key, 'cpu', numel)` as a persistent id.
    pub fn storage(self, class: &str, key: &str, numel: i64) -> Self {
        self.op(b"(").str("storage").global("torch", class).str(key).str("cpu").int(numel).op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
    /// with the numbers given as pickle ops (so that they can be anything).
    pub fn tensor_with(self, storage: Pickle, offset: Pickle, size: Pickle, stride: Pickle) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"(")
            .op(&storage.0)
            .op(&offset.0)
            .op(&size.0)
            .op(&stride.0)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")RtR")
    }
    pub fn tensor(self, class: &str, key: &str, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.tensor_with(
            Pickle::raw().storage(class, key, numel),
            Pickle::raw().int(offset),
            Pickle::raw().ints(size),
            Pickle::raw().ints(stride),
        )
    }
    /// `{'w': <tensor>}`
    pub fn state_dict(tensor: Pickle) -> Vec<u8> {
        Pickle::new().op(b"}").str("w").op(&tensor.0).op(b"s").stop()
    }
    pub fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A torch-style zip: every entry under `archive/`, stored uncompressed.
pub fn torch_zip(path: &Path, entries: &[(&str, &[u8])]) {
    torch_zip_with(path, entries, zip::CompressionMethod::Stored);
}

pub fn torch_zip_with(path: &Path, entries: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(format!("archive/{name}"), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap();
}

pub const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// A legacy `torch.save` file: magic, protocol 1001, sys info, `object`, the
/// storage keys, then each storage as an int64 count and its bytes.
pub fn legacy(sys_info: Vec<u8>, object: &[u8], keys: &[&str], storages: &[(i64, &[u8])]) -> Vec<u8> {
    let mut out = Pickle::new().op(&[0x8a, 10]).op(&LEGACY_MAGIC).stop();
    out.extend(Pickle::new().int(1001).stop());
    out.extend(sys_info);
    out.extend_from_slice(object);
    out.extend(keys.iter().fold(Pickle::new().op(b"("), |p, k| p.str(k)).op(b"l").stop());
    for (count, bytes) in storages {
        out.extend(count.to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

pub fn little_endian_sys_info() -> Vec<u8> {
    Pickle::new().op(b"}").str("little_endian").op(b"\x88s").stop()
}

/// The local and central header offsets of entry `name`, found through the
/// central directory.
pub fn entry_headers(bytes: &[u8], name: &str) -> (usize, usize) {
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([bytes[i], bytes[i + 1]]));
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let mut i = (0..=bytes.len() - 22).rev().find(|&i| bytes[i..].starts_with(b"PK\x05\x06")).expect("end record");
    i = u32_at(i + 16);
    while bytes[i..].starts_with(b"PK\x01\x02") {
        let (n, extra, comment) = (u16_at(i + 28), u16_at(i + 30), u16_at(i + 32));
        if &bytes[i + 46..i + 46 + n] == name.as_bytes() {
            return (u32_at(i + 42), i);
        }
        i += 46 + n + extra + comment;
    }
    panic!("no entry {name}")
}

/// Overwrites the CRC, compressed size and size that the local and central
/// headers of entry `name` declare.
pub fn patch_sizes(bytes: &mut [u8], name: &str, compressed: Option<u32>, size: Option<u32>, crc: Option<u32>) {
    let (local, central) = entry_headers(bytes, name);
    let mut set = |at: usize, v: Option<u32>| {
        if let Some(v) = v {
            bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    };
    set(local + 14, crc);
    set(local + 18, compressed);
    set(local + 22, size);
    set(central + 16, crc);
    set(central + 20, compressed);
    set(central + 24, size);
}

/// `[{'ref_id': 0, 'ann_id': 10, 'image_id': 1, 'category_id': 1,
/// 'split': 'train', 'sentences': [{'sent_id': 0, 'sent': 'the thing'}]}]`
/// with Python 2 byte strings, as the REFER files are.
pub fn refs_pickle() -> Vec<u8> {
    let s = |p: Pickle, v: &str| p.op(&[b'U', v.len() as u8]).op(v.as_bytes());
    let p = Pickle::new().op(b"]}(");
    let p = s(p, "ref_id").op(b"K\x00");
    let p = s(p, "ann_id").op(b"K\x0a");
    let p = s(p, "image_id").op(b"K\x01");
    let p = s(p, "category_id").op(b"K\x01");
    let p = s(s(p, "split"), "train");
    let p = s(p, "sentences").op(b"]}(");
    let p = s(p, "sent_id").op(b"K\x00");
    let p = s(s(p, "sent"), "the thing");
    p.op(b"ua").op(b"ua").stop()
}

/// One image (`height` × `width`) and one annotation (id 10) with `segmentation`.
pub fn instances_json(height: u64, width: u64, segmentation: &str) -> String {
    format!(
        r#"{{"images":[{{"id":1,"file_name":"a.jpg","height":{height},"width":{width}}}],
            "annotations":[{{"id":10,"image_id":1,"category_id":1,"bbox":[1,1,4,4],"segmentation":{segmentation}}}],
            "categories":[{{"id":1,"name":"thing"}}]}}"#
    )
}

pub fn write_refer(root: &Path, refs: &[u8], instances: &str) {
    let dir = root.join("refcoco");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("refs(unc).p"), refs).unwrap();
    std::fs::write(dir.join("instances.json"), instances).unwrap();
}
