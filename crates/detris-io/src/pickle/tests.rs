//! Unpickler tests. Byte literals were written by CPython 3.11's `pickle`
//! (`pickle.dumps(obj, protocol)`) or by hand in Python 2's protocol-0 style;
//! the expected trees are what `pickle.loads` returns for them.

use super::*;

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

/// `{'a': [1, 2.5, 'x', 'é', b'\x00\xff'], 'b': (None, True, False),
///   'big': 2**70, 'neg': -5, 'i32': -70000, 'u16': 60000}`
fn sample() -> Value {
    Value::Dict(vec![
        (s("a"), Value::List(vec![Value::Int(1), Value::Float(2.5), s("x"), s("é"), Value::Bytes(vec![0, 255])])),
        (s("b"), Value::Tuple(vec![Value::None, Value::Bool(true), Value::Bool(false)])),
        (s("big"), Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0, 0x40])),
        (s("neg"), Value::Int(-5)),
        (s("i32"), Value::Int(-70000)),
        (s("u16"), Value::Int(60000)),
    ])
}

const SAMPLE_P0: &[u8] = b"(dp0\nVa\np1\n(lp2\nI1\naF2.5\naVx\np3\naV\xe9\np4\nac_codecs\nencode\np5\n(V\\u0000\xff\np6\nVlatin1\np7\ntp8\nRp9\nasVb\np10\n(NI01\nI00\ntp11\nsVbig\np12\nL1180591620717411303424L\nsVneg\np13\nI-5\nsVi32\np14\nI-70000\nsVu16\np15\nI60000\ns.";
const SAMPLE_P1: &[u8] = b"}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03X\x02\x00\x00\x00\xc3\xa9q\x04c_codecs\nencode\nq\x05(X\x03\x00\x00\x00\x00\xc3\xbfq\x06X\x06\x00\x00\x00latin1q\x07tq\x08Rq\teX\x01\x00\x00\x00bq\n(NI01\nI00\ntq\x0bX\x03\x00\x00\x00bigq\x0cL1180591620717411303424L\nX\x03\x00\x00\x00negq\rJ\xfb\xff\xff\xffX\x03\x00\x00\x00i32q\x0eJ\x90\xee\xfe\xffX\x03\x00\x00\x00u16q\x0fM`\xeau.";
const SAMPLE_P2: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03X\x02\x00\x00\x00\xc3\xa9q\x04c_codecs\nencode\nq\x05X\x03\x00\x00\x00\x00\xc3\xbfq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\teX\x01\x00\x00\x00bq\nN\x88\x89\x87q\x0bX\x03\x00\x00\x00bigq\x0c\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@X\x03\x00\x00\x00negq\rJ\xfb\xff\xff\xffX\x03\x00\x00\x00i32q\x0eJ\x90\xee\xfe\xffX\x03\x00\x00\x00u16q\x0fM`\xeau.";
const SAMPLE_P3: &[u8] = b"\x80\x03}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03X\x02\x00\x00\x00\xc3\xa9q\x04C\x02\x00\xffq\x05eX\x01\x00\x00\x00bq\x06N\x88\x89\x87q\x07X\x03\x00\x00\x00bigq\x08\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@X\x03\x00\x00\x00negq\tJ\xfb\xff\xff\xffX\x03\x00\x00\x00i32q\nJ\x90\xee\xfe\xffX\x03\x00\x00\x00u16q\x0bM`\xeau.";
const SAMPLE_P5: &[u8] = b"\x80\x05\x95_\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94\x8c\x02\xc3\xa9\x94C\x02\x00\xff\x94e\x8c\x01b\x94N\x88\x89\x87\x94\x8c\x03big\x94\x8a\t\x00\x00\x00\x00\x00\x00\x00\x00@\x8c\x03neg\x94J\xfb\xff\xff\xff\x8c\x03i32\x94J\x90\xee\xfe\xff\x8c\x03u16\x94M`\xeau.";

#[test]
fn every_protocol_gives_the_same_tree() {
    for (protocol, bytes) in [(0, SAMPLE_P0), (1, SAMPLE_P1), (2, SAMPLE_P2), (3, SAMPLE_P3), (5, SAMPLE_P5)] {
        assert_eq!(parse(bytes).unwrap(), sample(), "protocol {protocol}");
    }
}

#[test]
fn python2_protocol0_strings_and_longs() {
    // Python 2 `pickle.dumps({'sent': "a 'cat'\n", 'ids': [12L, 7, -0.5], 'u': u'café ☺'}, 0)`.
    let p = b"(dp0\nS'sent'\np1\nS'a \\'cat\\'\\n'\np2\nsS'ids'\np3\n(lp4\nL12L\naI7\naF-0.5\nasS'u'\nVcaf\xe9 \\u263a\np5\ns.";
    let v = parse(p).unwrap();
    assert_eq!(v.get("sent"), Some(&Value::Bytes(b"a 'cat'\n".to_vec())));
    assert_eq!(v.get("sent").and_then(Value::as_str), Some("a 'cat'\n"));
    assert_eq!(v.get("ids"), Some(&Value::List(vec![Value::Int(12), Value::Int(7), Value::Float(-0.5)])));
    assert_eq!(v.get("u"), Some(&s("café ☺")));
}

#[test]
fn sets_ordered_dicts_and_shared_memo_entries() {
    // {'s': {1, 3}, 'f': frozenset([2])} in protocols 2 (builtins reduce) and 4 (set opcodes).
    let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00sq\x01c__builtin__\nset\nq\x02]q\x03(K\x01K\x03e\x85q\x04Rq\x05X\x01\x00\x00\x00fq\x06c__builtin__\nfrozenset\nq\x07]q\x08K\x02a\x85q\tRq\nu.";
    let p4 = b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01s\x94\x8f\x94(K\x01K\x03\x90\x8c\x01f\x94(K\x02\x91\x94u.";
    let want = Value::Dict(vec![
        (s("s"), Value::Set(vec![Value::Int(1), Value::Int(3)])),
        (s("f"), Value::Set(vec![Value::Int(2)])),
    ]);
    assert_eq!(parse(p2).unwrap(), want);
    assert_eq!(parse(p4).unwrap(), want);

    // OrderedDict([('z', 1), ('a', 2)]) keeps its order.
    let od =
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01(X\x01\x00\x00\x00zq\x02K\x01X\x01\x00\x00\x00aq\x03K\x02u.";
    assert_eq!(parse(od).unwrap(), Value::Dict(vec![(s("z"), Value::Int(1)), (s("a"), Value::Int(2))]));

    // l = []; {'x': l, 'y': l}; l.append(1): the list is filled after it was
    // memoised, and the second reference must see the filled list.
    let shared = b"\x80\x02}q\x00(X\x01\x00\x00\x00xq\x01]q\x02K\x01aX\x01\x00\x00\x00yq\x03h\x02u.";
    let v = parse(shared).unwrap();
    assert_eq!(v.get("x"), Some(&Value::List(vec![Value::Int(1)])));
    assert_eq!(v.get("y"), v.get("x"));
}

#[test]
fn repeated_dict_keys_keep_first_position_and_last_value() {
    // {'a': 1, 'b': 2, 'a': 3} as DICT with three pairs.
    let p = b"(Va\nI1\nVb\nI2\nVa\nI3\nd.";
    assert_eq!(parse(p).unwrap(), Value::Dict(vec![(s("a"), Value::Int(3)), (s("b"), Value::Int(2))]));
}

#[test]
fn torchscript_list_helpers_are_identity() {
    // torch.jit._pickle.build_intlist([1, 2])
    let p = b"\x80\x02ctorch.jit._pickle\nbuild_intlist\n]q\x00(K\x01K\x02e\x85R.";
    assert_eq!(parse(p).unwrap(), Value::List(vec![Value::Int(1), Value::Int(2)]));
}

#[test]
fn parse_prefix_reports_bytes_used() {
    let mut two = SAMPLE_P2.to_vec();
    two.extend_from_slice(b"\x80\x02K\x07.");
    let (first, used) = parse_prefix(&two).unwrap();
    assert_eq!(first, sample());
    assert_eq!(used, SAMPLE_P2.len());
    assert_eq!(parse(&two[used..]).unwrap(), Value::Int(7));
}

fn message(bytes: &[u8]) -> String {
    parse(bytes).unwrap_err().to_string()
}

#[test]
fn forbidden_globals_are_named_whatever_opcode_names_them() {
    let cases: [(&[u8], &str); 5] = [
        (b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00echo\x85R.", "os.system"),
        (b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R.", "builtins.eval"),
        (b"\x80\x04\x8c\nsubprocess\x8c\x05Popen\x93.", "subprocess.Popen"),
        (b"(S'ls'\nisubprocess\ncheck_output\n.", "subprocess.check_output"),
        (b"\x80\x02cposix\nsystem\n.", "posix.system"),
    ];
    for (bytes, name) in cases {
        let msg = message(bytes);
        assert!(msg.contains(&format!("`{name}`")) && msg.contains("does not allow"), "{msg}");
    }
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    assert!(message(b"\x80\x02]q\x00").contains("truncated"));
    assert!(message(b"\x80\x02\xff.").contains("unknown opcode 0xff"));
    assert!(message(b"\x80\x02h\x05.").contains("memo entry 5"));
    assert!(message(b"\x80\x02.").contains("empty stack"));
    assert!(message(b"\x80\x02K\x00K\x01K\x02s.").contains("not a dict"));
    assert!(message(b"\x80\x09N.").contains("protocol 9"));
    // A length far beyond the input is not allocated.
    assert!(message(b"\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\x7f.").contains("truncated"));
    assert!(message(b"\x80\x02T\xff\xff\xff\xff.").contains("negative length"));
    // Every prefix and every single-byte change of a valid pickle is handled.
    for cut in 0..SAMPLE_P2.len() {
        assert!(parse(&SAMPLE_P2[..cut]).is_err(), "prefix {cut}");
    }
    for i in 0..SAMPLE_P2.len() {
        for b in [0u8, 0x28, 0x2e, 0x7f, 0x80, 0xff] {
            let mut bytes = SAMPLE_P2.to_vec();
            bytes[i] = b;
            let _ = parse(&bytes);
        }
    }
}

#[test]
fn recursive_and_exploding_pickles_are_refused() {
    // l = []; l.append(l)
    assert!(message(b"\x80\x02]q\x00h\x00a.").contains("recursive"));
    // Each round doubles the tree: 60 rounds would be 2^60 nodes.
    let mut bomb = b"\x80\x02]q\x00".to_vec();
    for _ in 0..60 {
        bomb.extend_from_slice(b"h\x00h\x00\x86q\x00");
    }
    bomb.push(b'.');
    assert!(message(&bomb).contains("memory bomb"));
    // Nesting up to MAX_DEPTH is fine (and walks and drops without overflow).
    let nested = |n: usize| {
        let mut p = b"\x80\x02".to_vec();
        p.extend(std::iter::repeat_n(b']', n));
        p.extend(std::iter::repeat_n(b'a', n - 1));
        p.push(b'.');
        p
    };
    let ok = parse(&nested(MAX_DEPTH)).unwrap();
    assert_eq!(ok.clone(), ok);
    // 10,000 nested lists: deeper than MAX_DEPTH.
    let mut deep = b"\x80\x02".to_vec();
    deep.extend(std::iter::repeat_n(b']', 10_000));
    deep.extend(std::iter::repeat_n(b'a', 9_999));
    deep.push(b'.');
    assert!(message(&deep).contains("deeper than"));
}

#[test]
fn refer_refs_pickle_reads_as_a_list_of_ref_dicts() {
    let path = crate::fixtures::path("data/refer_mini/refcoco/refs(unc).p");
    let bytes = crate::error::read_file(&path).unwrap();
    let refs = parse(&bytes).unwrap();
    let refs = refs.as_list().expect("a list of refs");
    assert!(!refs.is_empty());
    for r in refs {
        assert!(r.get("ref_id").and_then(Value::as_i64).is_some());
        let split = r.get("split").and_then(Value::as_str).unwrap();
        assert!(["train", "val", "testA", "testB"].contains(&split), "{split}");
        let sentences = r.get("sentences").and_then(Value::as_list).unwrap();
        let sent_ids = r.get("sent_ids").and_then(Value::as_list).unwrap();
        assert_eq!(sentences.len(), sent_ids.len());
        for sent in sentences {
            assert!(sent.get("sent").and_then(Value::as_str).is_some());
        }
    }
}

#[test]
fn values_stay_small() {
    // REFER pickles decode to millions of values; rare variants are boxed.
    assert!(std::mem::size_of::<Value>() <= 32, "{}", std::mem::size_of::<Value>());
}
