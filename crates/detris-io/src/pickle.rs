//! A pickle reader that never executes anything.
//!
//! Checkpoints (`torch.save` `.pth`, TorchScript `data.pkl`) and the REFER
//! `refs(*).p` files are Python pickles. Python's unpickler runs whatever
//! callable a pickle names; this one instead turns the opcode stream
//! (protocols 0–5) into a plain [`Value`] tree. Every global a pickle names
//! is checked against a short allow-list of what those files contain
//! (`globals`); anything else (`os.system`, `builtins.eval`, ...) is an
//! error naming it. Calls stay as data ([`Value::Object`]) except a few pure
//! constructors of plain data (`OrderedDict()`, `set(...)`,
//! `_codecs.encode(s, "latin1")`, TorchScript's list helpers), which are
//! evaluated by hand.
//!
//! Resource bounds: the opcode machine allocates at most a few nodes per input
//! byte; the tree it returns is at most [`MAX_DEPTH`] deep (so walking or
//! dropping it cannot overflow the stack) and takes at most
//! `BUDGET_PER_BYTE × input length + BASE_BUDGET` bytes (shared memo entries
//! are copied, and this stops a "billion laughs" pickle). Copies made while
//! the opcodes run (calls and BUILDs given a shared entry again) are charged
//! against the same bound. A self-containing pickle is an error.

mod globals;
mod machine;
mod text;
pub mod writer;

use crate::error::Result;

pub use globals::is_allowed;

/// Deepest nesting of the returned tree. Checkpoints nest about 20 levels
/// (TorchScript module trees included), REFER refs 5.
pub const MAX_DEPTH: usize = 200;
/// Bytes of output tree allowed per input byte (shared memo entries are copied).
pub const BUDGET_PER_BYTE: usize = 64;
/// Bytes of output tree always allowed, whatever the input length.
pub const BASE_BUDGET: usize = 64 << 20;

/// A global reference `module.name` (e.g. `torch._utils._rebuild_tensor_v2`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    /// True when this is `module.name`.
    pub fn is(&self, module: &str, name: &str) -> bool {
        self.module == module && self.name == name
    }
}

impl std::fmt::Display for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// A call that was not executed: `callable(*args)` (REDUCE, NEWOBJ, INST,
/// OBJ), plus the state a later BUILD gave it (for TorchScript modules, the
/// attribute dict).
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    pub callable: Global,
    pub args: Vec<Value>,
    pub state: Option<Value>,
}

/// A decoded pickle value. Nothing in it was executed. (Rare variants are
/// boxed so that a value is 32 bytes: REFER pickles hold millions.)
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond i64: little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    Float(f64),
    /// A unicode string (Python 3 `str`, Python 2 `unicode`).
    Str(String),
    /// A byte string (Python 3 `bytes`, Python 2 `str`, `bytearray`).
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// `dict` or `OrderedDict`, in insertion order; a repeated key keeps its
    /// first position and its last value, as in Python.
    Dict(Vec<(Value, Value)>),
    /// `set` or `frozenset`.
    Set(Vec<Value>),
    Global(Box<Global>),
    /// A call that was not executed (see [`Object`]).
    Object(Box<Object>),
    /// A persistent id (PERSID/BINPERSID): torch's reference to a storage.
    PersistentId(Box<Value>),
}

/// Decodes a whole pickle (up to its STOP opcode). Errors are
/// [`crate::Error::Input`]; attribute them to a file with `.in_file(path)`.
pub fn parse(bytes: &[u8]) -> Result<Value> {
    parse_prefix(bytes).map(|(value, _)| value)
}

/// Decodes the pickle at the start of `bytes` and returns it with the number
/// of bytes it used (legacy `torch.save` files are several pickles in a row).
pub fn parse_prefix(bytes: &[u8]) -> Result<(Value, usize)> {
    machine::run(bytes)
}

impl Value {
    /// The string, for unicode strings and for byte strings that are UTF-8
    /// (Python 2 pickles store ASCII text as byte strings).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The bytes of a byte string, or the UTF-8 of a unicode string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            Value::Str(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// Integers and booleans (Python's `True == 1`).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// Floats, and integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// The items of a list, tuple or set.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(v) | Value::Tuple(v) | Value::Set(v) => Some(v),
            _ => None,
        }
    }

    /// The (key, value) pairs of a dict, in order.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// `dict[key]` for a string key (unicode or byte string).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }

    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(obj) => Some(obj),
            _ => None,
        }
    }

    pub fn as_global(&self) -> Option<&Global> {
        match self {
            Value::Global(g) => Some(g),
            _ => None,
        }
    }

    /// An attribute of an object whose BUILD state is an attribute dict
    /// (TorchScript modules): `obj.name`.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(obj) => obj.state.as_ref()?.get(name),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages ("a dict", ...).
    pub fn kind(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) | Value::BigInt(_) => "an int".into(),
            Value::Float(_) => "a float".into(),
            Value::Str(_) => "a string".into(),
            Value::Bytes(_) => "a byte string".into(),
            Value::List(_) => "a list".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Set(_) => "a set".into(),
            Value::Global(g) => format!("the global `{g}`"),
            Value::Object(obj) => format!("a `{}` object", obj.callable),
            Value::PersistentId(_) => "a persistent id".into(),
        }
    }
}

#[cfg(test)]
mod tests;
