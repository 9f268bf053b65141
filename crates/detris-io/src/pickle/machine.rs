//! The opcode machine: runs the pickle's opcodes over an arena of nodes
//! (so that memo entries are shared and later mutations such as SETITEMS are
//! seen through every reference, as in Python), then copies the result into a
//! [`Value`] tree under depth, size and cycle checks.

use std::collections::HashMap;

use super::{globals, text, Global, Object, Value, BASE_BUDGET, BUDGET_PER_BYTE, MAX_DEPTH};
use crate::error::{Error, Result};

type Id = usize;
type Step<T> = std::result::Result<T, String>;

enum Node {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    Global(Box<Global>),
    Object(Box<ObjectNode>),
    PersistentId(Id),
}

struct ObjectNode {
    callable: Global,
    args: Vec<Id>,
    state: Option<Id>,
}

// Immutable nodes shared by every occurrence (they cost no memory per opcode).
const NONE: Id = 0;
const TRUE: Id = 1;
const FALSE: Id = 2;
const EMPTY_TUPLE: Id = 3;

struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    op_pos: usize,
    arena: Vec<Node>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    /// Bytes left for copies of shared values (see [`Machine::charge`]).
    budget_left: usize,
}

const MEMORY_BOMB: &str = "pickle expands to far more data than its size (shared entries repeated too often); \
                           refusing it as a memory bomb";

/// Runs the pickle at the start of `input`; returns its value and the bytes used.
pub fn run(input: &[u8]) -> Result<(Value, usize)> {
    let budget = input.len().saturating_mul(BUDGET_PER_BYTE).saturating_add(BASE_BUDGET);
    let mut m = Machine {
        input,
        pos: 0,
        op_pos: 0,
        arena: vec![Node::None, Node::Bool(true), Node::Bool(false), Node::Tuple(Vec::new())],
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        budget_left: budget,
    };
    let root = m.execute().map_err(Error::input)?;
    let mut out = Materialiser { arena: &m.arena, visiting: vec![false; m.arena.len()], budget_left: budget };
    let value = out.value(root, 0).map_err(Error::input)?;
    Ok((value, m.pos))
}

impl<'a> Machine<'a> {
    fn execute(&mut self) -> Step<Id> {
        loop {
            self.op_pos = self.pos;
            let op = self.byte()?;
            match op {
                b'(' => self.marks.push(self.stack.len()),
                b'.' => return self.pop(),
                b'0' => {
                    // POP drops the top item, or the top MARK when its frame is empty.
                    if self.stack.len() > self.base() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.fail("POP on an empty stack"));
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                b'N' => self.stack.push(NONE),
                0x88 => self.stack.push(TRUE),
                0x89 => self.stack.push(FALSE),
                b'I' => {
                    let line = self.line()?;
                    let id = match line {
                        b"00" => FALSE,
                        b"01" => TRUE,
                        _ => {
                            let v = parse_text::<i64>(line).ok_or_else(|| self.fail("INT is not a 64-bit integer"))?;
                            self.alloc(Node::Int(v))
                        }
                    };
                    self.stack.push(id);
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.push(Node::Int(v.into()));
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Node::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.push(Node::Int(v.into()));
                }
                b'L' => {
                    let line = self.line()?;
                    let digits = line.strip_suffix(b"L").unwrap_or(line);
                    let node = match parse_text::<i64>(digits) {
                        Some(v) => Node::Int(v),
                        None => text::decimal_to_long(digits).map(|b| decode_long(&b)).map_err(|e| self.fail(&e))?,
                    };
                    self.push(node);
                }
                0x8a => {
                    let n = self.byte()?;
                    let bytes = self.take(n.into())?;
                    self.push(decode_long(bytes));
                }
                0x8b => {
                    let n = self.len_i32()?;
                    let bytes = self.take(n)?;
                    self.push(decode_long(bytes));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.push(Node::Float(v));
                }
                b'F' => {
                    let line = self.line()?;
                    let v = parse_text::<f64>(line).ok_or_else(|| self.fail("FLOAT is not a number"))?;
                    self.push(Node::Float(v));
                }
                b'S' => {
                    let line = self.line()?;
                    let bytes = text::decode_quoted_string(line).map_err(|e| self.fail(&e))?;
                    self.push(Node::Bytes(bytes));
                }
                b'T' => {
                    let n = self.len_i32()?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(Node::Bytes(bytes));
                }
                b'U' | b'C' => {
                    let n = self.byte()?;
                    let bytes = self.take(n.into())?.to_vec();
                    self.push(Node::Bytes(bytes));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.array()?);
                    let bytes = self.take(n as usize)?.to_vec();
                    self.push(Node::Bytes(bytes));
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?;
                    let bytes = self.take(n)?.to_vec();
                    self.push(Node::Bytes(bytes));
                }
                b'V' => {
                    let line = self.line()?;
                    let s = text::decode_raw_unicode_escape(line).map_err(|e| self.fail(&e))?;
                    self.push(Node::Str(s));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.array()?);
                    self.unicode(n as usize)?;
                }
                0x8c => {
                    let n = self.byte()?;
                    self.unicode(n.into())?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    self.unicode(n)?;
                }
                b']' => self.push(Node::List(Vec::new())),
                b'}' => self.push(Node::Dict(Vec::new())),
                b')' => self.stack.push(EMPTY_TUPLE),
                0x8f => self.push(Node::Set(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < self.base() + n {
                        return Err(self.fail("TUPLE1/2/3 on too short a stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![(key, value)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.extend_dict(pairs)?;
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    match self.arena.get_mut(target) {
                        Some(Node::Set(set)) => set.extend(items),
                        _ => return Err(self.fail("ADDITEMS on something that is not a set")),
                    }
                }
                b'c' => {
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    let global = self.check_global(module, name)?;
                    self.push(Node::Global(Box::new(global)));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(Node::Str(module)), Some(Node::Str(name))) =
                        (self.arena.get(module), self.arena.get(name))
                    else {
                        return Err(self.fail("STACK_GLOBAL needs two strings"));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.charge(module.len() + name.len())?;
                    let global = self.check_global(module, name)?;
                    self.push(Node::Global(Box::new(global)));
                }
                b'i' => {
                    let module = self.text_line()?;
                    let name = self.text_line()?;
                    let global = self.check_global(module, name)?;
                    let args = self.pop_mark()?;
                    let id = self.apply(global, args)?;
                    self.stack.push(id);
                }
                b'o' => {
                    let mut items = self.pop_mark()?.into_iter();
                    let callable = items.next().ok_or_else(|| self.fail("OBJ without a class"))?;
                    let global = self.callable(callable)?;
                    let id = self.apply(global, items.collect())?;
                    self.stack.push(id);
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let global = self.callable(callable)?;
                    let args = self.tuple_items(args)?;
                    let id = self.apply(global, args)?;
                    self.stack.push(id);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    if !matches!(self.arena.get(kwargs), Some(Node::Dict(d)) if d.is_empty()) {
                        return Err(self.fail("NEWOBJ_EX with keyword arguments"));
                    }
                    let global = self.callable(callable)?;
                    let args = self.tuple_items(args)?;
                    let id = self.apply(global, args)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                b'P' => {
                    let pid = String::from_utf8(self.line()?.to_vec()).map_err(|_| self.fail("PERSID is not text"))?;
                    let pid = self.alloc(Node::Str(pid));
                    self.push(Node::PersistentId(pid));
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.push(Node::PersistentId(pid));
                }
                b'p' => {
                    let key = parse_text::<u64>(self.line()?).ok_or_else(|| self.fail("PUT index is not a number"))?;
                    self.put(key)?;
                }
                b'q' => {
                    let key = self.byte()?;
                    self.put(key.into())?;
                }
                b'r' => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.put(key.into())?;
                }
                0x94 => self.put(self.memo.len() as u64)?,
                b'g' => {
                    let key = parse_text::<u64>(self.line()?).ok_or_else(|| self.fail("GET index is not a number"))?;
                    self.get(key)?;
                }
                b'h' => {
                    let key = self.byte()?;
                    self.get(key.into())?;
                }
                b'j' => {
                    let key = u32::from_le_bytes(self.array()?);
                    self.get(key.into())?;
                }
                0x80 => {
                    let proto = self.byte()?;
                    if proto > 5 {
                        return Err(self.fail(&format!("protocol {proto} is newer than the 5 detris reads")));
                    }
                }
                0x95 => {
                    // FRAME only announces the length of what follows.
                    self.array::<8>()?;
                }
                0x98 => {
                    self.top()?;
                }
                0x82..=0x84 => {
                    return Err(self.fail("the copyreg extension registry (EXT1/2/4) is not supported"));
                }
                0x97 => return Err(self.fail("out-of-band buffers (NEXT_BUFFER) are not supported")),
                other => return Err(self.fail(&format!("unknown opcode 0x{other:02x}"))),
            }
        }
    }

    fn fail(&self, what: &str) -> String {
        format!("pickle: {what} (opcode at byte {})", self.op_pos)
    }

    fn byte(&mut self) -> Step<u8> {
        let b = *self.input.get(self.pos).ok_or_else(|| self.truncated())?;
        self.pos += 1;
        Ok(b)
    }

    fn truncated(&self) -> String {
        format!("pickle is truncated: it ends at byte {} before its STOP opcode", self.input.len())
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.input.len()).ok_or_else(|| self.truncated())?;
        let input: &'a [u8] = self.input;
        let bytes = &input[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Step<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn len_i32(&mut self) -> Step<usize> {
        let n = i32::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.fail("negative length"))
    }

    fn len_u64(&mut self) -> Step<usize> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| self.truncated())
    }

    /// A protocol-0 text argument, without its newline.
    fn line(&mut self) -> Step<&'a [u8]> {
        let input: &'a [u8] = self.input;
        let rest = input.get(self.pos..).unwrap_or_default();
        let n = rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.truncated())?;
        let line = &rest[..n];
        self.pos += n + 1;
        Ok(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn text_line(&mut self) -> Step<String> {
        let line = self.line()?.to_vec();
        String::from_utf8(line).map_err(|_| self.fail("a global name is not text"))
    }

    fn unicode(&mut self, n: usize) -> Step<()> {
        let bytes = self.take(n)?.to_vec();
        let s = String::from_utf8(bytes).map_err(|_| self.fail("a unicode string is not valid UTF-8"))?;
        self.push(Node::Str(s));
        Ok(())
    }

    fn alloc(&mut self, node: Node) -> Id {
        self.arena.push(node);
        self.arena.len() - 1
    }

    fn push(&mut self, node: Node) {
        let id = self.alloc(node);
        self.stack.push(id);
    }

    /// Stack length at the innermost MARK: items below it are out of reach.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Step<Id> {
        if self.stack.len() <= self.base() {
            return Err(self.fail("pops from an empty stack"));
        }
        self.stack.pop().ok_or_else(|| self.fail("pops from an empty stack"))
    }

    fn top(&self) -> Step<Id> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.base() => Ok(id),
            _ => Err(self.fail("needs an item on an empty stack")),
        }
    }

    fn pop_mark(&mut self) -> Step<Vec<Id>> {
        let mark = self.marks.pop().ok_or_else(|| self.fail("needs a MARK that is not there"))?;
        if mark > self.stack.len() {
            return Err(self.fail("the stack shrank below its MARK"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Id>) -> Step<Vec<(Id, Id)>> {
        if items.len() % 2 == 1 {
            return Err(self.fail("a dict has a key without a value"));
        }
        Ok(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
    }

    fn extend_list(&mut self, items: Vec<Id>) -> Step<()> {
        let target = self.top()?;
        match self.arena.get_mut(target) {
            Some(Node::List(list)) => {
                list.extend(items);
                Ok(())
            }
            _ => Err(self.fail("APPEND(S) on something that is not a list")),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Id, Id)>) -> Step<()> {
        let target = self.top()?;
        match self.arena.get_mut(target) {
            Some(Node::Dict(dict)) => {
                dict.extend(pairs);
                Ok(())
            }
            _ => Err(self.fail("SETITEM(S) on something that is not a dict")),
        }
    }

    fn put(&mut self, key: u64) -> Step<()> {
        let top = self.top()?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn get(&mut self, key: u64) -> Step<()> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.fail(&format!("reads memo entry {key}, which was never stored")))?;
        self.stack.push(id);
        Ok(())
    }

    fn check_global(&self, module: String, name: String) -> Step<Global> {
        if globals::is_allowed(&module, &name) {
            Ok(Global { module, name })
        } else {
            Err(format!(
                "pickle refers to the global `{module}.{name}`, which detris does not allow \
                 (checkpoints may only contain tensors and plain data)"
            ))
        }
    }

    fn callable(&mut self, id: Id) -> Step<Global> {
        let global = match self.arena.get(id) {
            Some(Node::Global(g)) => (**g).clone(),
            _ => return Err(self.fail("calls something that is not a global")),
        };
        self.charge(global.module.len() + global.name.len())?;
        Ok(global)
    }

    fn tuple_items(&mut self, id: Id) -> Step<Vec<Id>> {
        let items = match self.arena.get(id) {
            Some(Node::Tuple(items)) => items.clone(),
            _ => return Err(self.fail("call arguments are not a tuple")),
        };
        self.charge(items.len() * std::mem::size_of::<Id>())?;
        Ok(items)
    }

    /// Charges a copy of a shared value against the size budget. Calls,
    /// STACK_GLOBAL and BUILD copy what they are given, and a memo entry can
    /// be given again for a few bytes of input: without this, repeating
    /// `OrderedDict(<memo'd dict>)` would use memory quadratic in the input.
    fn charge(&mut self, bytes: usize) -> Step<()> {
        self.budget_left = self
            .budget_left
            .checked_sub(bytes)
            .ok_or_else(|| format!("{MEMORY_BOMB} (opcode at byte {})", self.op_pos))?;
        Ok(())
    }

    /// `callable(*args)` without running anything: plain-data constructors
    /// are evaluated by hand, everything else stays an [`Node::Object`].
    fn apply(&mut self, callable: Global, args: Vec<Id>) -> Step<Id> {
        let arg = |i: usize| args.get(i).and_then(|&id| self.arena.get(id));
        let node = match (callable.module.as_str(), callable.name.as_str()) {
            ("collections", "OrderedDict" | "Counter") => match (args.len(), arg(0)) {
                (0, _) => Node::Dict(Vec::new()),
                (1, Some(Node::Dict(pairs))) => Node::Dict(pairs.clone()),
                _ => return Err(self.fail(&format!("`{callable}` is called with arguments other than a dict"))),
            },
            ("builtins" | "__builtin__", "set" | "frozenset") => match (args.len(), arg(0)) {
                (0, _) => Node::Set(Vec::new()),
                (1, Some(Node::List(items) | Node::Tuple(items) | Node::Set(items))) => Node::Set(items.clone()),
                _ => return Err(self.fail(&format!("`{callable}` is called with arguments other than a list"))),
            },
            ("_codecs", "encode") => {
                let Some(Node::Str(s)) = arg(0) else {
                    return Err(self.fail("`_codecs.encode` of something that is not a string"));
                };
                let encoding = match arg(1) {
                    None => "utf-8".to_string(),
                    Some(Node::Str(e)) => e.to_ascii_lowercase().replace('_', "-"),
                    Some(_) => return Err(self.fail("`_codecs.encode` with an encoding that is not a string")),
                };
                match encoding.as_str() {
                    "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => {
                        let bytes: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
                        Node::Bytes(bytes.ok_or_else(|| self.fail("`_codecs.encode`: a character is not Latin-1"))?)
                    }
                    "utf-8" | "utf8" => Node::Bytes(s.as_bytes().to_vec()),
                    other => return Err(self.fail(&format!("`_codecs.encode` with the encoding `{other}`"))),
                }
            }
            // TorchScript wraps typed containers: the value is the first argument.
            ("torch.jit._pickle", _) => {
                return args.first().copied().ok_or_else(|| self.fail(&format!("`{callable}` without arguments")));
            }
            _ => Node::Object(Box::new(ObjectNode { callable, args, state: None })),
        };
        self.charge(match &node {
            Node::Dict(pairs) => pairs.len() * std::mem::size_of::<(Id, Id)>(),
            Node::Set(items) => items.len() * std::mem::size_of::<Id>(),
            Node::Bytes(bytes) => bytes.len(),
            _ => 0,
        })?;
        Ok(self.alloc(node))
    }

    fn build(&mut self, target: Id, state: Id) -> Step<()> {
        let old_state = match self.arena.get(target) {
            Some(Node::Object(obj)) => obj.state,
            // Instance attributes of an OrderedDict (torch's `_metadata`:
            // per-module versions, never weights) are dropped.
            Some(Node::Dict(_)) => return Ok(()),
            _ => return Err(self.fail("BUILD on something that is not an object")),
        };
        // A second BUILD with a dict updates the attribute dict, as in Python.
        if let Some(old) = old_state {
            if let (Some(Node::Dict(old_pairs)), Some(Node::Dict(pairs))) = (self.arena.get(old), self.arena.get(state))
            {
                let mut merged = old_pairs.clone();
                merged.extend_from_slice(pairs);
                self.charge(merged.len() * std::mem::size_of::<(Id, Id)>())?;
                let merged = self.alloc(Node::Dict(merged));
                return self.set_state(target, merged);
            }
        }
        self.set_state(target, state)
    }

    fn set_state(&mut self, target: Id, state: Id) -> Step<()> {
        match self.arena.get_mut(target) {
            Some(Node::Object(obj)) => {
                obj.state = Some(state);
                Ok(())
            }
            _ => Err(self.fail("BUILD on something that is not an object")),
        }
    }
}

fn parse_text<T: std::str::FromStr>(line: &[u8]) -> Option<T> {
    std::str::from_utf8(line).ok()?.trim().parse().ok()
}

/// LONG1/LONG4 payload: little-endian two's complement.
fn decode_long(bytes: &[u8]) -> Node {
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0 };
    let fits = bytes.len() <= 8 || bytes[8..].iter().all(|&b| b == fill) && (bytes[7] & 0x80 != 0) == negative;
    if !fits {
        return Node::BigInt(bytes.to_vec());
    }
    let mut le = [fill; 8];
    let n = bytes.len().min(8);
    le[..n].copy_from_slice(&bytes[..n]);
    Node::Int(i64::from_le_bytes(le))
}

/// Copies the arena graph into a tree, refusing cycles, excessive depth and
/// excessive expansion of shared entries.
struct Materialiser<'a> {
    arena: &'a [Node],
    visiting: Vec<bool>,
    budget_left: usize,
}

impl Materialiser<'_> {
    // Plain loops and few frames per level: this recursion runs MAX_DEPTH
    // deep on 2 MiB test threads in debug builds.
    fn value(&mut self, id: Id, depth: usize) -> Step<Value> {
        if depth > MAX_DEPTH {
            return Err(format!("pickle nests deeper than {MAX_DEPTH} levels"));
        }
        let arena = self.arena;
        let node = arena.get(id).ok_or("pickle: internal node reference out of range")?;
        let payload = match node {
            Node::Str(s) => s.len(),
            Node::Bytes(b) | Node::BigInt(b) => b.len(),
            _ => 0,
        };
        self.charge(std::mem::size_of::<Value>() + payload)?;
        match node {
            Node::None => Ok(Value::None),
            Node::Bool(b) => Ok(Value::Bool(*b)),
            Node::Int(i) => Ok(Value::Int(*i)),
            Node::BigInt(b) => Ok(Value::BigInt(b.clone())),
            Node::Float(f) => Ok(Value::Float(*f)),
            Node::Str(s) => Ok(Value::Str(s.clone())),
            Node::Bytes(b) => Ok(Value::Bytes(b.clone())),
            Node::Global(g) => Ok(Value::Global(g.clone())),
            _ => {
                // A container met again inside itself would loop forever.
                match self.visiting.get_mut(id) {
                    Some(flag @ false) => *flag = true,
                    _ => {
                        return Err("pickle is recursive (a container holds itself), which checkpoints never are".into())
                    }
                }
                let out = self.container(node, depth + 1);
                if let Some(flag) = self.visiting.get_mut(id) {
                    *flag = false;
                }
                out
            }
        }
    }

    fn container(&mut self, node: &Node, depth: usize) -> Step<Value> {
        Ok(match node {
            Node::List(items) => Value::List(self.values(items, depth)?),
            Node::Tuple(items) => Value::Tuple(self.values(items, depth)?),
            Node::Set(items) => Value::Set(self.values(items, depth)?),
            Node::Dict(pairs) => {
                let mut out = Vec::with_capacity(pairs.len());
                for &(k, v) in pairs {
                    let k = self.value(k, depth)?;
                    out.push((k, self.value(v, depth)?));
                }
                Value::Dict(dedupe_keys(out))
            }
            Node::PersistentId(pid) => Value::PersistentId(Box::new(self.value(*pid, depth)?)),
            Node::Object(obj) => {
                let args = self.values(&obj.args, depth)?;
                let state = match obj.state {
                    Some(s) => Some(self.value(s, depth)?),
                    None => None,
                };
                Value::Object(Box::new(Object { callable: obj.callable.clone(), args, state }))
            }
            _ => return Err("pickle: internal error, a scalar taken for a container".into()),
        })
    }

    fn values(&mut self, items: &[Id], depth: usize) -> Step<Vec<Value>> {
        let mut out = Vec::with_capacity(items.len());
        for &i in items {
            out.push(self.value(i, depth)?);
        }
        Ok(out)
    }

    fn charge(&mut self, bytes: usize) -> Step<()> {
        self.budget_left = self.budget_left.checked_sub(bytes).ok_or(MEMORY_BOMB)?;
        Ok(())
    }
}

/// Keys Python would treat as equal (`True == 1` included).
#[derive(Hash, PartialEq, Eq)]
enum KeyRef<'a> {
    None,
    Int(i64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

fn key_ref(v: &Value) -> Option<KeyRef<'_>> {
    Some(match v {
        Value::None => KeyRef::None,
        Value::Int(i) => KeyRef::Int(*i),
        Value::Bool(b) => KeyRef::Int(i64::from(*b)),
        Value::Str(s) => KeyRef::Str(s),
        Value::Bytes(b) => KeyRef::Bytes(b),
        _ => return None,
    })
}

/// A repeated key keeps its first position and takes the last value.
fn dedupe_keys(pairs: Vec<(Value, Value)>) -> Vec<(Value, Value)> {
    if pairs.len() < 2 {
        return pairs;
    }
    let mut first_of: Vec<Option<usize>> = vec![None; pairs.len()];
    {
        let mut seen: HashMap<KeyRef<'_>, usize> = HashMap::with_capacity(pairs.len());
        for (i, (k, _)) in pairs.iter().enumerate() {
            if let Some(key) = key_ref(k) {
                match seen.entry(key) {
                    std::collections::hash_map::Entry::Occupied(e) => first_of[i] = Some(*e.get()),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(i);
                    }
                }
            }
        }
    }
    if first_of.iter().all(Option::is_none) {
        return pairs;
    }
    let mut slots: Vec<Option<(Value, Value)>> = pairs.into_iter().map(Some).collect();
    for (i, first) in first_of.iter().enumerate() {
        if let Some(f) = *first {
            if let Some((_, v)) = slots.get_mut(i).and_then(Option::take) {
                if let Some(Some(slot)) = slots.get_mut(f) {
                    slot.1 = v;
                }
            }
        }
    }
    slots.into_iter().flatten().collect()
}
