//! Hostile and broken files, built here byte by byte: every reader must end
//! in a clear error that names the file (or input) and says what is wrong,
//! execute nothing, and stay within bounded time and memory.
//!
//! Each call runs on a thread of its own (`bounded`): the test fails if it
//! takes longer than `TIME_LIMIT` (60 s) or if that thread's live heap ever grows
//! past the case's byte limit (a counting allocator tracks it per thread).
//!
//! `checkpoints.rs` already covers `os.system` / `builtins.eval` /
//! `subprocess.Popen` as the root of a zip's `data.pkl`, storage keys
//! `../../etc/passwd` and absent ones, a view one element too long, a storage
//! shorter than its persistent id, a negative size, and safetensors headers
//! with broken JSON, overlapping ranges or ranges past the end. This file does
//! the rest: every opcode that can name or call a global, every container
//! (zip, legacy, TorchScript, REFER refs), overflowing numbers, zip bombs,
//! lying images and COCO annotations.

mod hostile_support;

use std::io::Write;
use std::path::Path;

use hostile_support::*;

use detris_io::data::refer::Refer;
use detris_io::image::{decode_rgb, load_rgb, rgb_png};
use detris_io::pickle;
use detris_io::safetensors_file;
use detris_io::torch_file::{load_checkpoint, load_state_dict, load_torchscript};

// ---------------------------------------------------------------------------
// Code execution.

/// Pickles that would run `touch <marker>` (or worse) under Python's
/// unpickler, one per opcode that can name or call a global.
fn evil_pickles(marker: &Path) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let cmd = format!("touch {}", marker.display());
    let m = marker.display().to_string();
    vec![
        ("GLOBAL + REDUCE", "os.system", Pickle::new().global("os", "system").str(&cmd).op(b"\x85R").stop()),
        (
            "STACK_GLOBAL + REDUCE",
            "os.system",
            Pickle(vec![0x80, 4]).str("os").str("system").op(b"\x93").str(&cmd).op(b"\x85R").stop(),
        ),
        ("INST", "os.system", Pickle::raw().op(b"(").str(&cmd).op(b"ios\nsystem\n").stop()),
        ("OBJ", "posix.system", Pickle::new().op(b"(").global("posix", "system").str(&cmd).op(b"o").stop()),
        (
            "NEWOBJ",
            "subprocess.Popen",
            Pickle::new().global("subprocess", "Popen").op(b"(").str("touch").str(&m).op(b"l\x85\x81").stop(),
        ),
        (
            "NEWOBJ_EX",
            "subprocess.Popen",
            Pickle(vec![0x80, 4]).global("subprocess", "Popen").op(b"(").str("touch").str(&m).op(b"l\x85}\x92").stop(),
        ),
        (
            "getattr(__import__('os'), 'system')",
            "builtins.getattr",
            Pickle::new()
                .global("builtins", "getattr")
                .global("builtins", "__import__")
                .str("os")
                .op(b"\x85R")
                .str("system")
                .op(b"\x86R")
                .str(&cmd)
                .op(b"\x85R")
                .stop(),
        ),
        (
            "eval",
            "builtins.eval",
            Pickle::new().global("builtins", "eval").str("__import__('os').system('ls')").op(b"\x85R").stop(),
        ),
        (
            "exec",
            "builtins.exec",
            Pickle::new().global("builtins", "exec").str(&format!("import os; os.system('{cmd}')")).op(b"\x85R").stop(),
        ),
        ("a pickle inside a pickle", "pickle.loads", Pickle::new().global("pickle", "loads").op(b"C\x01.\x85R").stop()),
        (
            "torch.load of bytes",
            "torch.storage._load_from_bytes",
            Pickle::new().global("torch.storage", "_load_from_bytes").op(b"C\x01.\x85R").stop(),
        ),
        (
            "os.system as a storage class",
            "os.system",
            Pickle::state_dict(Pickle::raw().tensor_with(
                Pickle::raw().op(b"(").str("storage").global("os", "system").str("0").str(&cmd).int(1).op(b"tQ"),
                Pickle::raw().int(0),
                Pickle::raw().ints(&[1]),
                Pickle::raw().ints(&[1]),
            )),
        ),
        (
            "os.system deep inside a valid state dict",
            "nt.system",
            Pickle::new()
                .op(b"}(")
                .str("w")
                .tensor("FloatStorage", "0", 4, 0, &[4], &[1])
                .str("meta")
                .op(b"](((")
                .global("nt", "system")
                .str(&cmd)
                .op(b"\x85Rtttu")
                .stop(),
        ),
    ]
}

#[test]
fn code_is_never_run_whatever_opcode_or_container_carries_it() {
    let dir = scratch("code");
    let marker = dir.join("pwned");
    let storage = f32_bytes(&[1., 2., 3., 4.]);
    for (how, global, pkl) in evil_pickles(&marker) {
        let named = format!("`{global}`");
        // A bare pickle.
        let bytes = pkl.clone();
        refused(&format!("{how}: pickle::parse"), 16 * MB, &[&named, "does not allow"], move || pickle::parse(&bytes));

        // The data.pkl of a torch.save zip, read as a state dict and as TorchScript.
        let path = dir.join("evil.pth");
        torch_zip(&path, &[("data.pkl", &pkl), ("data/0", &storage)]);
        let p = path.clone();
        refused(&format!("{how}: zip"), 16 * MB, &[&show(&path), "archive/data.pkl", &named], move || {
            load_state_dict(&p)
        });
        let p = path.clone();
        refused(&format!("{how}: TorchScript"), 16 * MB, &[&show(&path), &named], move || load_torchscript(&p, true));

        // The saved object, and the sys-info pickle, of a legacy torch.save file.
        let path = dir.join("evil_legacy.pth");
        std::fs::write(&path, legacy(little_endian_sys_info(), &pkl, &["0"], &[(4, &storage)])).unwrap();
        let p = path.clone();
        refused(&format!("{how}: legacy object"), 16 * MB, &[&show(&path), &named], move || load_state_dict(&p));
        let ok = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[4], &[1]));
        std::fs::write(&path, legacy(pkl.clone(), &ok, &["0"], &[(4, &storage)])).unwrap();
        let p = path.clone();
        refused(&format!("{how}: legacy sys info"), 16 * MB, &[&show(&path), "sys info", &named], move || {
            load_state_dict(&p)
        });

        // A REFER `refs(unc).p`.
        let root = dir.join("refer");
        write_refer(&root, &pkl, &instances_json(100, 100, "[[1,1,50,1,50,50,1,50]]"));
        let refs_path = root.join("refcoco").join("refs(unc).p");
        refused(&format!("{how}: REFER refs"), 16 * MB, &[&show(&refs_path), &named], move || {
            Refer::load(&root, "refcoco", None).map(|r| r.refs.len())
        });
    }
    assert!(!marker.exists(), "a command ran");
}

#[test]
fn calls_of_anything_but_a_global_are_refused() {
    // REDUCE / NEWOBJ / OBJ whose callable is a string, a dict, a tensor record.
    let cases: [(&str, Vec<u8>); 4] = [
        ("REDUCE of a string", Pickle::new().str("os.system").str("ls").op(b"\x85R").stop()),
        ("REDUCE of a dict", Pickle::new().op(b"}").op(b")R").stop()),
        ("NEWOBJ of a list", Pickle::new().op(b"]").op(b")\x81").stop()),
        ("OBJ of an int", Pickle::new().op(b"(K\x01o").stop()),
    ];
    for (what, bytes) in cases {
        refused(what, 16 * MB, &["calls something that is not a global"], move || pickle::parse(&bytes));
    }
    // REDUCE whose arguments are not a tuple.
    let bytes = Pickle::new().global("collections", "OrderedDict").op(b"]R").stop();
    refused("REDUCE with a list", 16 * MB, &["not a tuple"], move || pickle::parse(&bytes));
}

// ---------------------------------------------------------------------------
// Storages and views.

#[test]
fn storage_keys_cannot_leave_the_archive() {
    let dir = scratch("keys");
    let data = f32_bytes(&[1., 2., 3., 4.]);
    let path = dir.join("keys.pth");
    // Keys that would name another entry or a path outside the archive.
    for key in ["/etc/passwd", "data/0", "..", "0\0", "C:\\x", "0 ", "", "data.pkl"] {
        let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", key, 4, 0, &[4], &[1]));
        torch_zip(&path, &[("data.pkl", &pkl), ("data/0", &data), ("data.pkl/x", &data)]);
        let p = path.clone();
        refused(&format!("key {key:?}"), 16 * MB, &[&show(&path), "tensor `w`", "not a plain name"], move || {
            load_state_dict(&p)
        });
    }
    // An integer key that is negative (becomes "-1").
    let pkl = Pickle::state_dict(Pickle::raw().tensor_with(
        Pickle::raw().op(b"(").str("storage").global("torch", "FloatStorage").int(-1).str("cpu").int(4).op(b"tQ"),
        Pickle::raw().int(0),
        Pickle::raw().ints(&[4]),
        Pickle::raw().ints(&[1]),
    ));
    torch_zip(&path, &[("data.pkl", &pkl), ("data/0", &data)]);
    let p = path.clone();
    refused("key -1", 16 * MB, &[&show(&path), "not a plain name"], move || load_state_dict(&p));
    // An entry named outside the archive's folder is never a storage.
    let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "evil", 4, 0, &[4], &[1]));
    let mut w = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in [("archive/data.pkl", &pkl[..]), ("../../evil", &data[..]), ("evil", &data[..])] {
        w.start_file(name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap();
    let p = path.clone();
    refused("entry outside archive/", 16 * MB, &[&show(&path), "archive/data/evil"], move || load_state_dict(&p));
    assert!(!dir.join("../../evil").exists() && !dir.join("evil").exists());

    // Legacy files: a key the file does not hold.
    let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "1", 4, 0, &[4], &[1]));
    let legacy_path = dir.join("legacy.pth");
    std::fs::write(&legacy_path, legacy(little_endian_sys_info(), &pkl, &[], &[])).unwrap();
    let p = legacy_path.clone();
    refused("legacy absent key", 16 * MB, &[&show(&legacy_path), "storage `1`"], move || load_state_dict(&p));
}

#[test]
fn views_that_overflow_or_leave_their_storage_are_refused() {
    let dir = scratch("views");
    let data = f32_bytes(&[1., 2., 3., 4.]);
    let path = dir.join("view.pth");
    let big = |n: u8| Pickle::raw().op(b"(").big_int(n).op(b"t");
    let cases: Vec<(&str, Pickle, &str)> = vec![
        ("negative offset", Pickle::raw().tensor("FloatStorage", "0", 4, -1, &[1], &[1]), "offset is -1"),
        ("negative stride", Pickle::raw().tensor("FloatStorage", "0", 4, 3, &[2], &[-1]), "stride is -1"),
        ("overflowing stride", Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[5, 2], &[i64::MAX, 1]), "overflows"),
        ("huge offset", Pickle::raw().tensor("FloatStorage", "0", 4, i64::MAX, &[2], &[1]), "reaches element"),
        ("offset past the end", Pickle::raw().tensor("FloatStorage", "0", 4, 4, &[1], &[1]), "reaches element 4"),
        (
            "element count overflows",
            Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[1 << 32, 1 << 32, 1 << 32], &[0, 0, 0]),
            "overflows",
        ),
        (
            "byte count overflows",
            Pickle::raw().tensor("DoubleStorage", "0", 2, 0, &[1 << 31, 1 << 31], &[0, 0]),
            "overflows",
        ),
        ("expanded to 2^40", Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[1 << 40], &[0]), "expanded views"),
        ("size and stride differ", Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[2, 2], &[1]), "differ in length"),
        (
            "storage claims 2^61 elements",
            Pickle::raw().tensor("FloatStorage", "0", 1 << 61, 0, &[4], &[1]),
            "fewer than",
        ),
        (
            "size beyond i64",
            Pickle::raw().tensor_with(
                Pickle::raw().storage("FloatStorage", "0", 4),
                Pickle::raw().int(0),
                big(9),
                big(9),
            ),
            "beyond 64 bits",
        ),
        (
            "offset beyond i64",
            Pickle::raw().tensor_with(
                Pickle::raw().storage("FloatStorage", "0", 4),
                Pickle::raw().big_int(200),
                Pickle::raw().ints(&[1]),
                Pickle::raw().ints(&[1]),
            ),
            "beyond 64 bits",
        ),
        (
            "storage size beyond i64",
            Pickle::raw().tensor_with(
                Pickle::raw()
                    .op(b"(")
                    .str("storage")
                    .global("torch", "FloatStorage")
                    .str("0")
                    .str("cpu")
                    .big_int(9)
                    .op(b"tQ"),
                Pickle::raw().int(0),
                Pickle::raw().ints(&[1]),
                Pickle::raw().ints(&[1]),
            ),
            "storage size is an integer beyond 64 bits",
        ),
    ];
    for (what, tensor, want) in cases {
        torch_zip(&path, &[("data.pkl", &Pickle::state_dict(tensor)), ("data/0", &data)]);
        let p = path.clone();
        refused(what, 16 * MB, &[&show(&path), "tensor `w`", want], move || load_state_dict(&p));
    }

    // Legacy files: a storage that declares more elements than the file
    // holds, a negative count, and a view cut outside its root storage.
    let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[4], &[1]));
    let legacy_path = dir.join("legacy.pth");
    for (count, want) in [(1i64 << 62, "declares"), (1 << 61, "past the end"), (-4, "declares -4"), (5, "past the end")]
    {
        std::fs::write(&legacy_path, legacy(little_endian_sys_info(), &pkl, &["0"], &[(count, &data)])).unwrap();
        let p = legacy_path.clone();
        refused(&format!("legacy count {count}"), 16 * MB, &[&show(&legacy_path), want], move || load_state_dict(&p));
    }
    let view = Pickle::state_dict(
        Pickle::raw().tensor_with(
            Pickle::raw()
                .op(b"(")
                .str("storage")
                .global("torch", "FloatStorage")
                .str("0")
                .str("cpu")
                .int(4)
                .op(b"(")
                .str("0")
                .int(3)
                .int(2)
                .op(b"ttQ"),
            Pickle::raw().int(0),
            Pickle::raw().ints(&[2]),
            Pickle::raw().ints(&[1]),
        ),
    );
    std::fs::write(&legacy_path, legacy(little_endian_sys_info(), &view, &["0"], &[(4, &data)])).unwrap();
    let p = legacy_path.clone();
    refused("legacy view outside its storage", 16 * MB, &[&show(&legacy_path), "lies outside"], move || {
        load_state_dict(&p)
    });
}

// ---------------------------------------------------------------------------
// Zip containers.

#[test]
fn zip_bombs_and_lying_entries_are_refused() {
    let dir = scratch("zip");
    let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[4], &[1]));
    let data = f32_bytes(&[1., 2., 3., 4.]);
    let path = dir.join("bomb.pth");
    let deflated = |path: &Path| {
        torch_zip_with(path, &[("data.pkl", &pkl), ("data/0", &data)], zip::CompressionMethod::Deflated);
        std::fs::read(path).unwrap()
    };
    // Sanity: the honest deflated archive loads.
    deflated(&path);
    assert_eq!(load_state_dict(&path).unwrap()["w"].to_f32_vec(), [1., 2., 3., 4.]);

    // data.pkl declares 4 GB (a zip bomb): refused before inflating.
    let mut bytes = deflated(&path);
    patch_sizes(&mut bytes, "archive/data.pkl", None, Some(0xffff_fff0), None);
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused("4 GB declared", 16 * MB, &[&show(&path), "archive/data.pkl", "zip bomb"], move || load_state_dict(&p));

    // A storage that declares 4 GB.
    let mut bytes = deflated(&path);
    patch_sizes(&mut bytes, "archive/data/0", None, Some(0xffff_fff0), None);
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused("4 GB storage", 16 * MB, &[&show(&path), "archive/data/0", "zip bomb"], move || load_state_dict(&p));

    // A stored entry whose sizes disagree, or that runs past the end of the file.
    let stored = |path: &Path| {
        torch_zip(path, &[("data.pkl", &pkl), ("data/0", &data)]);
        std::fs::read(path).unwrap()
    };
    let mut bytes = stored(&path);
    patch_sizes(&mut bytes, "archive/data/0", Some(0x7fff_ffff), Some(0x7fff_ffff), None);
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused("stored past the end", 16 * MB, &[&show(&path)], move || load_state_dict(&p));

    // A compression method detris does not read (bzip2 = 12).
    let mut bytes = stored(&path);
    let (local, central) = entry_headers(&bytes, "archive/data/0");
    bytes[local + 8] = 12;
    bytes[central + 10] = 12;
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused("bzip2", 16 * MB, &[&show(&path), "archive/data/0"], move || load_state_dict(&p));

    // An end-of-central-directory record that claims 65535 entries in a tiny file.
    let mut eocd = b"PK\x05\x06\0\0\0\0\xff\xff\xff\xff".to_vec();
    eocd.extend(0xffff_fff0u32.to_le_bytes());
    eocd.extend(0u32.to_le_bytes());
    eocd.extend(0u16.to_le_bytes());
    std::fs::write(&path, &eocd).unwrap();
    let p = path.clone();
    refused("lying end record", 16 * MB, &[&show(&path), "zip"], move || load_state_dict(&p));
}

// ---------------------------------------------------------------------------
// Recursion and expansion.

#[test]
fn recursive_and_expanding_pickles_are_refused_in_every_container() {
    let dir = scratch("recursive");
    // l = []; l.append(l), as a checkpoint and as REFER refs.
    let recursive = Pickle::new().op(b"]q\x00h\x00a").stop();
    let path = dir.join("recursive.pth");
    torch_zip(&path, &[("data.pkl", &recursive)]);
    let p = path.clone();
    refused("recursive data.pkl", 16 * MB, &[&show(&path), "recursive"], move || load_state_dict(&p));
    let root = dir.join("refer");
    write_refer(&root, &recursive, &instances_json(10, 10, "[[1,1,5,1,5,5]]"));
    let refs = show(&root.join("refcoco").join("refs(unc).p"));
    refused("recursive refs", 16 * MB, &[&refs, "recursive"], move || {
        Refer::load(&root, "refcoco", None).map(|r| r.refs.len())
    });
    // A dict that holds itself through a TorchScript module's state.
    let module = Pickle::new().global("__torch__", "M").op(b")\x81q\x00}(").str("me").op(b"h\x00ub").stop();
    let path = dir.join("module.pt");
    torch_zip(&path, &[("data.pkl", &module)]);
    let p = path.clone();
    refused("recursive module", 16 * MB, &[&show(&path), "recursive"], move || load_torchscript(&p, false));

    // Each round doubles the tree (2^60 nodes): a memory bomb, in a legacy file.
    let mut bomb = Pickle::new().op(b"]q\x00");
    for _ in 0..60 {
        bomb = bomb.op(b"h\x00h\x00\x86q\x00");
    }
    let path = dir.join("bomb_legacy.pth");
    std::fs::write(&path, legacy(little_endian_sys_info(), &bomb.stop(), &[], &[])).unwrap();
    let p = path.clone();
    refused("legacy bomb", 128 * MB, &[&show(&path), "memory bomb"], move || load_state_dict(&p));
}

// ---------------------------------------------------------------------------
// safetensors.

#[test]
fn safetensors_headers_that_lie_are_refused() {
    let dir = scratch("safetensors");
    let header = |json: &str, data_len: usize| {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend(json.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        b
    };
    let t = |name: &str, dtype: &str, shape: &str, a: &str, b: &str| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{a},{b}]}}"#)
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("header length u64::MAX", u64::MAX.to_le_bytes().iter().copied().chain(*b"{}").collect(), "header"),
        ("header length 2^40", (1u64 << 40).to_le_bytes().iter().copied().chain(*b"{}").collect(), "header"),
        ("reversed range", header(&format!("{{{}}}", t("a", "F32", "[1]", "4", "0")), 4), "invalid offset"),
        ("range beyond u64", header(&format!("{{{}}}", t("a", "F32", "[1]", "0", "18446744073709551615")), 4), ""),
        (
            "a gap between tensors",
            header(&format!("{{{},{}}}", t("a", "F32", "[1]", "0", "4"), t("b", "F32", "[1]", "8", "12")), 12),
            "invalid offset",
        ),
        (
            "shape whose element count overflows",
            header(&format!("{{{}}}", t("a", "F32", "[4294967296,4294967296,4294967296]", "0", "4")), 4),
            "",
        ),
        ("byte count disagrees with the shape", header(&format!("{{{}}}", t("a", "F32", "[2]", "0", "4")), 4), ""),
        ("unknown dtype", header(&format!("{{{}}}", t("a", "F99", "[1]", "0", "4")), 4), ""),
        ("dtype detris does not read", header(&format!("{{{}}}", t("a", "F8_E4M3", "[1]", "0", "1")), 1), "F8_E4M3"),
        ("header is a list", header("[1,2,3]", 0), ""),
        ("metadata is not strings", header(r#"{"__metadata__":{"a":[1]}}"#, 0), ""),
        (
            "header is not UTF-8",
            header("{\"\u{0}\u{1}\": 1}", 0).into_iter().map(|b| if b == 1 { 0xff } else { b }).collect(),
            "",
        ),
        ("shorter than its length field", b"\x08\x00\x00".to_vec(), ""),
    ];
    for (what, bytes, want) in cases {
        let path = dir.join("bad.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let p = path.clone();
        refused(what, 16 * MB, &[&show(&path), want], move || safetensors_file::read(&p).map(|(t, _)| t.len()));
        // The same through the format-sniffing checkpoint reader (when the
        // bytes still look like safetensors).
        let p = path.clone();
        refused(&format!("{what} (load_checkpoint)"), 16 * MB, &[&show(&path)], move || {
            load_checkpoint(&p).map(|c| c.tensors.len())
        });
    }
}

// ---------------------------------------------------------------------------
// Images.

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc_input = kind.to_vec();
    crc_input.extend_from_slice(data);
    out.extend(crc32(&crc_input).to_be_bytes());
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG whose header says `w × h` (8-bit RGB) and whose IDAT is `idat`.
fn png_claiming(w: u32, h: u32, idat: &[u8]) -> Vec<u8> {
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(png_chunk(b"IHDR", &ihdr));
    out.extend(png_chunk(b"IDAT", idat));
    out.extend(png_chunk(b"IEND", b""));
    out
}

#[test]
fn images_that_lie_about_their_size_or_are_cut_are_refused() {
    let dir = scratch("images");
    // Zlib stream of a few zero bytes: far less than the header claims.
    let tiny_idat = [0x78, 0x9c, 0x63, 0x60, 0x00, 0x00, 0x00, 0x02, 0x00, 0x01];
    // A real 16 × 16 JPEG whose frame header (SOF0) is changed to 65500 × 65500.
    let mut jpeg = Vec::new();
    image::RgbImage::from_pixel(16, 16, image::Rgb([200, 30, 90]))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let sof = jpeg.windows(2).position(|w| w == b"\xff\xc0").expect("a baseline JPEG");
    jpeg[sof + 5..sof + 7].copy_from_slice(&65500u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&65500u16.to_be_bytes());
    // WebP extended header (VP8X) with a 2^24 × 2^24 canvas.
    let mut vp8x = vec![0u8; 4];
    vp8x.extend(&(0xff_ffffu32.to_le_bytes())[..3]);
    vp8x.extend(&(0xff_ffffu32.to_le_bytes())[..3]);
    let mut webp = b"RIFF".to_vec();
    webp.extend(((4 + 8 + vp8x.len()) as u32).to_le_bytes());
    webp.extend(b"WEBPVP8X");
    webp.extend((vp8x.len() as u32).to_le_bytes());
    webp.extend(&vp8x);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("PNG 100000 × 100000", png_claiming(100_000, 100_000, &tiny_idat), "claims 100000×100000 pixels"),
        ("PNG 20001 × 1", png_claiming(20_001, 1, &tiny_idat), "claims 20001×1 pixels"),
        ("PNG 15000 × 15000 (over 100 MP)", png_claiming(15_000, 15_000, &tiny_idat), "claims 15000×15000"),
        ("PNG 0 × 5", png_claiming(0, 5, &tiny_idat), ""),
        ("JPEG 65500 × 65500", jpeg, "claims 65500×65500"),
        ("WebP 2^24 × 2^24", webp, ""),
    ];
    for (what, bytes, want) in cases {
        let path = dir.join("claims.img");
        std::fs::write(&path, &bytes).unwrap();
        let p = path.clone();
        refused(what, 64 * MB, &[&show(&path), want], move || load_rgb(&p).map(|i| i.dimensions()));
        refused(&format!("{what} (in memory)"), 64 * MB, &["upload.png: ", want], move || {
            decode_rgb(&bytes, "upload.png").map(|i| i.dimensions())
        });
    }

    // A real PNG cut inside its pixel stream, and one whose IDAT is damaged.
    let mut img = image::RgbImage::new(64, 48);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 251) as u8]);
    }
    let good = rgb_png(&img).unwrap();
    assert_eq!(decode_rgb(&good, "good").unwrap(), img);
    let idat = good.windows(4).position(|w| w == b"IDAT").unwrap();
    for (what, bytes) in [
        ("cut inside IDAT", good[..idat + 40].to_vec()),
        ("cut before IEND", good[..good.len() - 12].to_vec()),
        ("IDAT bytes changed", {
            let mut b = good.clone();
            for v in &mut b[idat + 10..idat + 30] {
                *v ^= 0x5a;
            }
            b
        }),
    ] {
        let path = dir.join("cut.png");
        std::fs::write(&path, &bytes).unwrap();
        let p = path.clone();
        let msg = refused(what, 64 * MB, &[&show(&path)], move || load_rgb(&p).map(|i| i.dimensions()));
        assert!(msg.contains("corrupt") || msg.contains("truncated"), "{what}: {msg}");
    }
}

// ---------------------------------------------------------------------------
// REFER.

#[test]
fn refer_annotations_that_lie_are_refused() {
    let dir = scratch("refer");
    let root = dir.join("root");
    // Sanity: the hand-made set loads and rasterises.
    write_refer(&root, &refs_pickle(), &instances_json(10, 10, "[[1,1,8,1,8,8,1,8]]"));
    let refer = Refer::load(&root, "refcoco", None).unwrap();
    assert!(refer.mask(&refer.refs[0]).unwrap().counts.iter().any(|&c| c == 1));
    let instances = show(&root.join("refcoco").join("instances.json"));

    let huge = u64::MAX.to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("image 10^9 × 10^9", instances_json(1_000_000_000, 1_000_000_000, "[[1,1,8,1,8,8]]"), "larger than"),
        ("image u64::MAX wide", instances_json(10, u64::MAX, "[[1,1,8,1,8,8]]"), ""),
        ("image 0 × 0", instances_json(0, 0, "[[1,1,8,1,8,8]]"), "empty"),
        ("polygon at 1e300", instances_json(10, 10, "[[1e300,1,8,1,8,8]]"), "not a usable number"),
        ("polygon at -1e9", instances_json(10, 10, "[[-1e9,1,8,1,8,8]]"), "not a usable number"),
        ("polygon 10^8 px away", instances_json(10, 10, "[[1,1,1e8,1,1e8,-1e8,1,-1e8]]"), "limit"),
        ("RLE bigger than the image", instances_json(10, 10, r#"{"size":[100000,100000],"counts":[10000000000]}"#), ""),
        ("RLE counts too short", instances_json(10, 10, r#"{"size":[10,10],"counts":[5,5]}"#), "add up to 10"),
        ("RLE counts overflow", instances_json(10, 10, &format!(r#"{{"size":[10,10],"counts":[{huge},1]}}"#)), ""),
        ("compressed RLE overlong", instances_json(10, 10, r#"{"size":[10,10],"counts":"oooooooooooooooo"}"#), ""),
        ("RLE size negative", instances_json(10, 10, r#"{"size":[-1,10],"counts":[]}"#), "size"),
        ("segmentation a string", instances_json(10, 10, r#""[[1,2,3]]""#), "neither"),
    ];
    for (what, json, want) in cases {
        write_refer(&root, &refs_pickle(), &json);
        let r = root.clone();
        refused(what, 256 * MB, &[&instances, want], move || {
            let refer = Refer::load(&r, "refcoco", None)?;
            refer.mask(&refer.refs[0]).map(|m| m.counts.len())
        });
    }

    // Refs that point at nothing, and refs that are not refs.
    write_refer(&root, &Pickle::new().op(b"]").stop(), &instances_json(10, 10, "[[1,1,8,1,8,8]]"));
    assert!(Refer::load(&root, "refcoco", None).unwrap().refs.is_empty());
    let refs = show(&root.join("refcoco").join("refs(unc).p"));
    for (what, pkl, want) in [
        ("refs a dict", Pickle::new().op(b"}").stop(), "expected a list of refs"),
        ("ref without ids", Pickle::new().op(b"]}a").stop(), "ref #0"),
        ("truncated refs", refs_pickle()[..40].to_vec(), "truncated"),
    ] {
        write_refer(&root, &pkl, &instances_json(10, 10, "[[1,1,8,1,8,8]]"));
        let r = root.clone();
        refused(what, 16 * MB, &[&refs, want], move || Refer::load(&r, "refcoco", None).map(|r| r.refs.len()));
    }
}
