//! The allow-listed unpickler on arbitrary bytes: never a panic, a hang or
//! unbounded memory; whatever it returns is a finite tree within MAX_DEPTH.
#![no_main]

use detris_io::pickle::{self, Value, MAX_DEPTH};
use libfuzzer_sys::fuzz_target;

fn depth(v: &Value) -> usize {
    let below = match v {
        Value::List(items) | Value::Tuple(items) | Value::Set(items) => items.iter().map(depth).max().unwrap_or(0),
        Value::Dict(pairs) => pairs.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        Value::Object(obj) => obj.args.iter().map(depth).max().unwrap_or(0).max(obj.state.as_ref().map_or(0, depth)),
        Value::PersistentId(pid) => depth(pid),
        _ => 0,
    };
    below + 1
}

fuzz_target!(|data: &[u8]| {
    match pickle::parse_prefix(data) {
        Ok((value, used)) => {
            assert!(used <= data.len());
            assert!(depth(&value) <= MAX_DEPTH + 2);
            let _ = value.kind();
            // Every global in the tree passed the allow-list.
            fn globals_allowed(v: &Value) -> bool {
                match v {
                    Value::Global(g) => pickle::is_allowed(&g.module, &g.name),
                    Value::Object(o) => {
                        pickle::is_allowed(&o.callable.module, &o.callable.name)
                            && o.args.iter().all(globals_allowed)
                            && o.state.as_ref().is_none_or(globals_allowed)
                    }
                    Value::List(items) | Value::Tuple(items) | Value::Set(items) => items.iter().all(globals_allowed),
                    Value::Dict(pairs) => pairs.iter().all(|(k, v)| globals_allowed(k) && globals_allowed(v)),
                    Value::PersistentId(pid) => globals_allowed(pid),
                    _ => true,
                }
            }
            assert!(globals_allowed(&value));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
});
