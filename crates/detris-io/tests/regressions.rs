//! Bugs found by fuzzing (`fuzz/`) and by the hostile-file suite
//! (`hostile.rs`), each with the input that showed it. Every case failed
//! before its fix; the comment says how.

mod hostile_support;

use detris_io::data::coco_mask::Rle;
use detris_io::data::refer::Refer;
use detris_io::pickle::{self, BASE_BUDGET, BUDGET_PER_BYTE};
use detris_io::torch_file::load_state_dict;

use hostile_support::*;

/// Pickle memory bomb in the opcode machine (found by the hostile suite).
/// The tree was budgeted, but the machine itself copied a shared value on
/// every call or BUILD given it again from the memo: `OrderedDict(d)`,
/// `set(l)`, `_codecs.encode(s)`, the argument tuple of any call, the name of
/// a STACK_GLOBAL, a BUILD merging a dict. Each repetition costs a few bytes
/// of pickle and copied the whole value, so memory grew quadratically with
/// the input: the 20,000-entry `OrderedDict` case below (a 220 KB pickle)
/// asks for about 6.4 GB; under a 6 GB address-space limit the old code
/// aborted on a failed allocation. Now every copy is charged against the same
/// budget as the tree.
#[test]
fn pickle_copies_of_shared_values_are_charged() {
    let n = 20_000usize;
    // d = {0: None, 1: None, ...} (memo 0), then the repeated call.
    let dict =
        (0..n).fold(Pickle::new().op(b"}q\x00("), |p, i| p.op(b"J").op(&(i as i32).to_le_bytes()).op(b"N")).op(b"u");
    let list = (0..n).fold(Pickle::new().op(b"]q\x00("), |p, i| p.op(b"J").op(&(i as i32).to_le_bytes())).op(b"e");
    let tuple = (0..n).fold(Pickle::new().op(b"("), |p, i| p.op(b"J").op(&(i as i32).to_le_bytes())).op(b"tq\x00");
    let long_name = "x".repeat(1 << 20);
    let repeat =
        |start: Pickle, each: &[u8], times: usize| (0..times).fold(start.op(b"]("), |p, _| p.op(each)).op(b"e").stop();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "OrderedDict(d)",
            repeat(dict.clone().global("collections", "OrderedDict").op(b"q\x01"), b"h\x01h\x00\x85R", n),
        ),
        ("set(l)", repeat(list.global("builtins", "set").op(b"q\x01"), b"h\x01h\x00\x85R", n)),
        ("a call's argument tuple", repeat(tuple.global("__torch__", "M").op(b"q\x01"), b"h\x01h\x00R", n)),
        (
            "_codecs.encode(s)",
            repeat(
                Pickle::new().str(&long_name).op(b"q\x00").global("_codecs", "encode").op(b"q\x01"),
                b"h\x01h\x00\x85R",
                n,
            ),
        ),
        (
            "STACK_GLOBAL of a long name",
            repeat(
                Pickle(vec![0x80, 4]).str("__torch__").op(b"q\x00").str(&long_name).op(b"q\x01"),
                b"h\x00h\x01\x93",
                n,
            ),
        ),
        ("BUILD merging d", (0..n).fold(dict.global("__torch__", "M").op(b")\x81"), |p, _| p.op(b"h\x00b")).stop()),
    ];
    for (what, bytes) in cases {
        // What the design allows: the machine's copies and the tree, each
        // within the budget, plus the opcode arena (a few nodes per byte).
        let budget = BUDGET_PER_BYTE * bytes.len() + BASE_BUDGET;
        let bound = 2 * budget + 64 * bytes.len();
        let msg = match bounded(what, bound, move || pickle::parse(&bytes).map(|v| v.kind())) {
            Ok(kind) => panic!("{what}: accepted ({kind})"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains("memory bomb"), "{what}: {msg}");
    }
}

/// A deflated zip entry was read with `take(declared size)`, so the zip
/// reader never reached the end of the stream, where it checks the CRC: a
/// damaged deflated storage loaded as weights, and an entry that inflates to
/// more than it declares was silently cut (found by the hostile suite).
#[test]
fn deflated_entries_are_checked_against_their_crc_and_size() {
    let dir = scratch("deflated");
    let pkl = Pickle::state_dict(Pickle::raw().tensor("FloatStorage", "0", 4, 0, &[4], &[1]));
    let data = f32_bytes(&[1., 2., 3., 4.]);
    let path = dir.join("deflated.pth");
    let deflated = |path: &std::path::Path| {
        torch_zip_with(path, &[("data.pkl", &pkl), ("data/0", &data)], zip::CompressionMethod::Deflated);
        std::fs::read(path).unwrap()
    };
    deflated(&path);
    assert_eq!(load_state_dict(&path).unwrap()["w"].to_f32_vec(), [1., 2., 3., 4.]);

    // The storage's CRC changed: before, the weights loaded.
    let mut bytes = deflated(&path);
    patch_sizes(&mut bytes, "archive/data/0", None, None, Some(0x1234_5678));
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused("bad CRC", 16 * MB, &[&show(&path), "entry `archive/data/0` does not inflate", "checksum"], move || {
        load_state_dict(&p)
    });

    // The storage declares 12 of its 16 bytes: before, a 3-element tensor... of
    // a storage that says 4 (caught later by luck); now the entry itself is refused.
    let mut bytes = deflated(&path);
    patch_sizes(&mut bytes, "archive/data/0", None, Some(12), None);
    std::fs::write(&path, &bytes).unwrap();
    let p = path.clone();
    refused(
        "inflates to more",
        16 * MB,
        &[&show(&path), "inflates to more than the 12 bytes it declares"],
        move || load_state_dict(&p),
    );
}

/// Polygon time bomb (found by the hostile suite): a polygon far outside a
/// small image was traced point by point up to the absolute limit of 2^26
/// boundary steps, so a few bytes of JSON per polygon kept `Refer::mask` busy
/// for many seconds (times in docs/bench/README.md). The
/// limit is now relative to the frame as well (edges may average twice its
/// height + width), and polygons near the frame are unaffected.
#[test]
fn polygons_far_outside_the_frame_are_refused_not_traced() {
    let dir = scratch("far_polygons");
    let far = "[1,1,3e6,1,3e6,-3e6,1,-3e6]";
    let root = dir.join("root");
    write_refer(&root, &refs_pickle(), &instances_json(10, 10, &format!("[{}]", vec![far; 64].join(","))));
    let instances = show(&root.join("refcoco").join("instances.json"));
    refused("64 far polygons", 16 * MB, &[&instances, "coordinates far outside the 10x10 image"], move || {
        let refer = Refer::load(&root, "refcoco", None)?;
        refer.mask(&refer.refs[0]).map(|m| m.counts.len())
    });
    // Vertices half a frame outside are still traced, as pycocotools does.
    let near = Rle::from_polygon(&[-5.0, -5.0, 15.0, -5.0, 15.0, 15.0, -5.0, 15.0], 10, 10).unwrap();
    assert_eq!(near.area(), 100);
}
