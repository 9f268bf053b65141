//! A small pickle *writer* for plain data (lists, tuples, dicts, str, int,
//! float, bool, None) and the few calls `torch.save` files hold (a global
//! applied to arguments, persistent ids): enough for REFER's `refs(*).p` and
//! the official DETRIS checkpoint.
//!
//! The output is protocol 2, laid out as Python 3's `pickle.dumps(obj, 2)`
//! lays it out (BINPUT after every container and string, APPENDS/SETITEMS in
//! batches of 1000), except that equal strings are written once and fetched
//! again with BINGET, as in the original REFER files.

use std::collections::HashMap;

/// A plain value that can be pickled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PickleValue {
    None,
    Bool(bool),
    Int(i64),
    /// Compared by bits, so that a value tree can be `Eq`.
    Float(F64Bits),
    Str(String),
    List(Vec<PickleValue>),
    Tuple(Vec<PickleValue>),
    /// Keys in insertion order (Python dicts keep it).
    Dict(Vec<(PickleValue, PickleValue)>),
    /// A global (`module.name`) by reference, e.g. `torch.FloatStorage`.
    Global(String, String),
    /// `module.name(*args)`, as REDUCE builds it when unpickled.
    Call(String, String, Vec<PickleValue>),
    /// A persistent id (torch's reference to a storage).
    PersistentId(Box<PickleValue>),
}

/// An f64 held by its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct F64Bits(pub u64);

impl PickleValue {
    /// A dict from `(key, value)` pairs, in the given order.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, PickleValue)>) -> Self {
        PickleValue::Dict(pairs.into_iter().map(|(k, v)| (PickleValue::str(k), v)).collect())
    }
    pub fn float(x: f64) -> Self {
        PickleValue::Float(F64Bits(x.to_bits()))
    }
    /// `module.name(*args)`.
    pub fn call(module: &str, name: &str, args: Vec<PickleValue>) -> Self {
        PickleValue::Call(module.to_string(), name.to_string(), args)
    }
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        PickleValue::Str(s.into())
    }
}

/// Serialises `value` as a protocol-2 pickle (from PROTO to STOP).
pub fn to_pickle(value: &PickleValue) -> Vec<u8> {
    let mut writer = Writer { out: vec![0x80, 2], memo_len: 0, strings: HashMap::new() };
    writer.value(value);
    writer.out.push(b'.');
    writer.out
}

/// Python batches APPENDS / SETITEMS in groups of this size.
const BATCH: usize = 1000;

struct Writer {
    out: Vec<u8>,
    memo_len: u32,
    /// Memo index of every string written so far.
    strings: HashMap<String, u32>,
}

impl Writer {
    fn value(&mut self, value: &PickleValue) {
        match value {
            PickleValue::None => self.out.push(b'N'),
            PickleValue::Bool(b) => self.out.push(if *b { 0x88 } else { 0x89 }), // NEWTRUE / NEWFALSE
            PickleValue::Float(bits) => {
                self.out.push(b'G'); // BINFLOAT, big-endian
                self.out.extend(f64::from_bits(bits.0).to_be_bytes());
            }
            PickleValue::Tuple(items) => self.tuple(items),
            PickleValue::Global(module, name) => self.global(module, name),
            PickleValue::Call(module, name, args) => {
                self.global(module, name);
                self.tuple(args);
                self.out.push(b'R'); // REDUCE
                self.put();
            }
            PickleValue::PersistentId(id) => {
                self.value(id);
                self.out.push(b'Q'); // BINPERSID
            }
            PickleValue::Int(i) => self.int(*i),
            PickleValue::Str(s) => self.string(s),
            PickleValue::List(items) => {
                self.out.push(b']'); // EMPTY_LIST
                self.put();
                for chunk in items.chunks(BATCH) {
                    if let [single] = chunk {
                        self.value(single);
                        self.out.push(b'a'); // APPEND
                    } else {
                        self.out.push(b'('); // MARK
                        chunk.iter().for_each(|item| self.value(item));
                        self.out.push(b'e'); // APPENDS
                    }
                }
            }
            PickleValue::Dict(pairs) => {
                self.out.push(b'}'); // EMPTY_DICT
                self.put();
                for chunk in pairs.chunks(BATCH) {
                    let many = chunk.len() > 1;
                    if many {
                        self.out.push(b'(');
                    }
                    for (key, item) in chunk {
                        self.value(key);
                        self.value(item);
                    }
                    self.out.push(if many { b'u' } else { b's' }); // SETITEMS / SETITEM
                }
            }
        }
    }

    fn tuple(&mut self, items: &[PickleValue]) {
        if items.is_empty() {
            self.out.push(b')'); // EMPTY_TUPLE
            return;
        }
        self.out.push(b'('); // MARK
        items.iter().for_each(|item| self.value(item));
        self.out.push(b't'); // TUPLE
        self.put();
    }

    /// GLOBAL `module\nname\n`, memoised: the same global is fetched again.
    fn global(&mut self, module: &str, name: &str) {
        let key = format!("\0global {module}.{name}");
        if let Some(&index) = self.strings.get(&key) {
            self.get(index);
            return;
        }
        self.out.push(b'c');
        for part in [module, name] {
            self.out.extend(part.as_bytes());
            self.out.push(b'\n');
        }
        self.strings.insert(key, self.memo_len);
        self.put();
    }

    fn get(&mut self, index: u32) {
        if index < 256 {
            self.out.extend([b'h', index as u8]); // BINGET
        } else {
            self.out.push(b'j'); // LONG_BINGET
            self.out.extend(index.to_le_bytes());
        }
    }

    fn int(&mut self, i: i64) {
        if (0..256).contains(&i) {
            self.out.extend([b'K', i as u8]); // BININT1
        } else if (0..65536).contains(&i) {
            self.out.push(b'M'); // BININT2
            self.out.extend((i as u16).to_le_bytes());
        } else if let Ok(small) = i32::try_from(i) {
            self.out.push(b'J'); // BININT
            self.out.extend(small.to_le_bytes());
        } else {
            // LONG1: minimal little-endian two's complement.
            let bytes = i.to_le_bytes();
            let mut len = 8;
            while len > 1 {
                let top = bytes[len - 1];
                let next_sign = bytes[len - 2] & 0x80;
                if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                    len -= 1;
                } else {
                    break;
                }
            }
            self.out.extend([0x8a, len as u8]);
            self.out.extend(&bytes[..len]);
        }
    }

    fn string(&mut self, s: &str) {
        if let Some(&index) = self.strings.get(s) {
            self.get(index);
            return;
        }
        self.out.push(b'X'); // BINUNICODE
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
        self.strings.insert(s.to_string(), self.memo_len);
        self.put();
    }

    /// Memoises the object just written, as Python's pickler does.
    fn put(&mut self) {
        let index = self.memo_len;
        if index < 256 {
            self.out.extend([b'q', index as u8]); // BINPUT
        } else {
            self.out.push(b'r'); // LONG_BINPUT
            self.out.extend(index.to_le_bytes());
        }
        self.memo_len += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_python_for_a_small_dict() {
        // pickle.dumps({'a': 1, 'b': [300, 'x']}, 2) in Python 3.
        let value = PickleValue::dict([
            ("a", PickleValue::Int(1)),
            ("b", PickleValue::List(vec![PickleValue::Int(300), PickleValue::str("x")])),
        ]);
        let expected: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01K\x01X\x01\x00\x00\x00bq\x02]q\x03(M,\x01X\x01\x00\x00\x00xq\x04eu.";
        assert_eq!(to_pickle(&value), expected);
    }

    #[test]
    fn repeated_strings_are_fetched_from_the_memo() {
        let value = PickleValue::List(vec![PickleValue::str("ab"), PickleValue::str("ab")]);
        let expected: &[u8] = b"\x80\x02]q\x00(X\x02\x00\x00\x00abq\x01h\x01e.";
        assert_eq!(to_pickle(&value), expected);
    }

    #[test]
    fn integers_use_the_smallest_opcode() {
        let bytes = |i| to_pickle(&PickleValue::Int(i));
        assert_eq!(bytes(255), b"\x80\x02K\xff.");
        assert_eq!(bytes(65535), b"\x80\x02M\xff\xff.");
        assert_eq!(bytes(-1), b"\x80\x02J\xff\xff\xff\xff.");
        assert_eq!(bytes(1 << 40), b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\x01.");
        assert_eq!(bytes(-(1 << 40)), b"\x80\x02\x8a\x06\x00\x00\x00\x00\x00\xff.");
        assert_eq!(bytes(i64::MIN), b"\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.");
    }

    #[test]
    fn calls_tuples_floats_and_persistent_ids_read_back() {
        use crate::pickle::{parse, Value};
        let value = PickleValue::Dict(vec![
            (PickleValue::Int(0), PickleValue::Tuple(vec![PickleValue::float(0.9), PickleValue::float(-1e-8)])),
            (PickleValue::str("none"), PickleValue::None),
            (PickleValue::str("flags"), PickleValue::List(vec![PickleValue::Bool(true), PickleValue::Bool(false)])),
            (
                PickleValue::str("t"),
                PickleValue::call(
                    "torch._utils",
                    "_rebuild_tensor_v2",
                    vec![PickleValue::PersistentId(Box::new(PickleValue::Tuple(vec![
                        PickleValue::str("storage"),
                        PickleValue::Global("torch".into(), "FloatStorage".into()),
                    ])))],
                ),
            ),
            (PickleValue::str("again"), PickleValue::call("collections", "OrderedDict", vec![])),
        ]);
        let parsed = parse(&to_pickle(&value)).unwrap();
        let pairs = parsed.as_dict().unwrap();
        assert_eq!(pairs[0].0, Value::Int(0));
        assert_eq!(pairs[0].1, Value::Tuple(vec![Value::Float(0.9), Value::Float(-1e-8)]));
        assert!(pairs[1].1.is_none());
        assert_eq!(pairs[2].1, Value::List(vec![Value::Bool(true), Value::Bool(false)]));
        let call = pairs[3].1.as_object().unwrap();
        assert!(call.callable.is("torch._utils", "_rebuild_tensor_v2"));
        assert!(matches!(&call.args[0], Value::PersistentId(id) if id.as_list().is_some_and(|t| t.len() == 2)));
        assert_eq!(pairs[4].1, Value::Dict(vec![]), "OrderedDict() is an empty dict");
    }

    #[test]
    fn the_crate_unpickler_reads_it_back() {
        use crate::pickle::{parse, Value};
        // 1500 items: two APPENDS batches; 300 distinct strings: LONG_BINPUT / LONG_BINGET.
        let items: Vec<PickleValue> = (0..1500)
            .map(|i| {
                PickleValue::dict([
                    ("name", PickleValue::str(format!("s{}", i % 300))),
                    ("n", PickleValue::Int(i as i64 * 1_000_003 - 700_000_000)),
                    ("é", PickleValue::List(vec![])),
                ])
            })
            .collect();
        let parsed = parse(&to_pickle(&PickleValue::List(items))).unwrap();
        let list = parsed.as_list().unwrap();
        assert_eq!(list.len(), 1500);
        for (i, item) in list.iter().enumerate() {
            assert_eq!(item.get("name").and_then(Value::as_str), Some(format!("s{}", i % 300).as_str()));
            assert_eq!(item.get("n").and_then(Value::as_i64), Some(i as i64 * 1_000_003 - 700_000_000));
            assert_eq!(item.get("é").and_then(Value::as_list), Some(&[][..]));
        }
        assert_eq!(parse(&to_pickle(&PickleValue::Int(1 << 40))).unwrap().as_i64(), Some(1 << 40));
    }
}
