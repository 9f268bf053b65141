//! The picture of the house in `docs/architecture.md` is true: the import graph
//! derived from the sources (`use crate::…`, `use super::…` and inline
//! `crate::…` / `super::…` paths, outside comments, strings and test modules)
//! has no arrow from a lower module up to a higher one in the documented order,
//! and no circle among the files of any folder. No source cites an outside spec.
//!
//! A folder's own file (`mod.rs`, or `foo.rs` beside `foo/`) is its door: it
//! declares and re-exports its children, and they may use what it defines, so
//! edges between a module and its own ancestors are not arrows between rooms.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A module path inside its crate (`["weights", "official"]`); the crate root is empty.
type ModPath = Vec<String>;

/// One crate's sources: module path → file, and the edges between modules.
struct Crate {
    name: &'static str,
    files: BTreeMap<ModPath, PathBuf>,
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/a/b.rs` → `[a, b]`; `src/a/mod.rs` → `[a]`; the crate root → `[]`.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        parts.pop();
    }
    parts
}

/// The detris library (src/ without the binary's `main.rs` and `cli/`), the
/// binary, and detris-io; test-only files (`tests.rs`) are left out.
fn crates() -> Vec<Crate> {
    let mut out = Vec::new();
    let in_cli = |f: &Path| f.starts_with(Path::new(ROOT).join("src/cli"));
    let lib = |f: &Path| !in_cli(f) && !f.ends_with("src/main.rs");
    let bin = |f: &Path| in_cli(f) || f.ends_with("src/main.rs");
    let io = |_: &Path| true;
    let parts: [(&'static str, &str, &dyn Fn(&Path) -> bool); 3] =
        [("detris", "src", &lib), ("detris (binary)", "src", &bin), ("detris-io", "crates/detris-io/src", &io)];
    for (name, src, keep) in parts {
        let src = Path::new(ROOT).join(src);
        let mut list = Vec::new();
        rust_files(&src, &mut list);
        let files = list
            .into_iter()
            .filter(|f| f.file_name().is_some_and(|n| n != "tests.rs") && keep(f))
            .map(|f| (module_of(&src, &f), f))
            .collect();
        out.push(Crate { name, files });
    }
    out
}

/// The code without comments, string and char literals, and without what
/// follows the first `#[cfg(test)]` (the test module closes every file here).
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap();
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'r' if matches!(b.get(i + 1), Some(b'"' | b'#')) && (i == 0 || !is_ident(b[i - 1])) => {
                // r"…" or r#"…"#
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    out.push('r');
                    i += 1;
                    continue;
                }
                let close: Vec<u8> = std::iter::once(b'"').chain(std::iter::repeat_n(b'#', hashes)).collect();
                i += 2 + hashes;
                while i < b.len() && !b[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                out.push_str("\"\"");
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n', '"'); a lifetime ('a) is kept.
            b'\'' if b.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < b.len() && b[i] != b'\'' {
                    i += 1;
                }
                i += 1;
            }
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            c => {
                // Copy one whole UTF-8 character.
                let len = match c {
                    0..0x80 => 1,
                    0xC0..0xE0 => 2,
                    0xE0..0xF0 => 3,
                    _ => 4,
                };
                out.push_str(std::str::from_utf8(&b[i..(i + len).min(b.len())]).unwrap_or(" "));
                i += len;
            }
        }
    }
    out
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Expands a use tree (`crate::{a::{b, c}, d as e}`) into its paths.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    // Split on the top-level `::` up to an opening brace.
    let mut parts = prefix.to_vec();
    let mut rest = tree;
    loop {
        rest = rest.trim_start();
        if let Some(inner) = rest.strip_prefix('{') {
            let inner = &inner[..inner.rfind('}').unwrap_or(inner.len())];
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand_use(&inner[start..i], &parts, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            expand_use(&inner[start..], &parts, out);
            return;
        }
        let end = rest.find("::").unwrap_or(rest.len());
        let seg = rest[..end].split_whitespace().next().unwrap_or("");
        if !seg.is_empty() && seg != "*" {
            parts.push(seg.to_string());
        }
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 2..];
    }
    out.push(parts);
}

/// Every path this code names that starts with `crate`, `super` or `self`.
fn paths_of(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    // `use` statements (their trees may branch).
    let mut from = 0;
    while let Some(at) = code[from..].find("use ") {
        let i = from + at;
        from = i + 4;
        if i > 0 && is_ident(b[i - 1]) {
            continue;
        }
        let end = code[i..].find(';').map_or(code.len(), |e| i + e);
        expand_use(&code[i + 4..end], &[], &mut out);
        from = end;
    }
    // Inline paths: `crate::eval::evaluate(…)`, `super::data::Batch`.
    for head in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(head) {
            let i = from + at;
            from = i + head.len();
            if i > 0 && (is_ident(b[i - 1]) || b[i - 1] == b':') {
                continue;
            }
            let mut segs = vec![head.trim_end_matches(':').to_string()];
            let mut j = i + head.len();
            loop {
                let s = j;
                while j < b.len() && is_ident(b[j]) {
                    j += 1;
                }
                if j == s {
                    break;
                }
                segs.push(code[s..j].to_string());
                if code[j..].starts_with("::") {
                    j += 2;
                } else {
                    break;
                }
            }
            out.push(segs);
        }
    }
    out
}

/// The module a path lands in (the longest prefix that is a module), seen from `here`.
fn resolve(path: &[String], here: &ModPath, modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut full: ModPath = here.clone();
    let mut segs = path.iter().peekable();
    match segs.peek().map(|s| s.as_str()) {
        Some("crate") => {
            full.clear();
            segs.next();
        }
        Some("super") | Some("self") => {
            while let Some(s) = segs.peek() {
                match s.as_str() {
                    "super" => {
                        full.pop()?;
                    }
                    "self" => {}
                    _ => break,
                }
                segs.next();
            }
        }
        _ => return None,
    }
    full.extend(segs.cloned());
    (0..=full.len()).rev().map(|k| full[..k].to_vec()).find(|m| modules.contains(m))
}

/// module → the modules it imports (itself and its ancestors left out).
fn edges(krate: &Crate) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
    let modules: BTreeSet<ModPath> = krate.files.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (m, file) in &krate.files {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let targets: BTreeSet<ModPath> =
            paths_of(&code).iter().filter_map(|p| resolve(p, m, &modules)).filter(|t| !m.starts_with(t)).collect();
        out.insert(m.clone(), targets);
    }
    out
}

/// The documented order of each crate's top-level modules, lowest first, from
/// the ```layers block of docs/architecture.md (`crate: a b c`).
fn documented_layers() -> BTreeMap<String, Vec<String>> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md")).unwrap();
    let block = doc.split("```layers").nth(1).expect("docs/architecture.md has a ```layers block");
    let block = block.split("```").next().unwrap();
    block
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let names = v.split(|c: char| c.is_whitespace() || c == '→' || c == '<').filter(|s| !s.is_empty());
            (k.trim().to_string(), names.map(str::to_string).collect())
        })
        .collect()
}

/// A circle in `graph`, if any (as the list of nodes on it).
fn find_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &String,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| s == n).unwrap();
                let mut circle = stack[from..].to_vec();
                circle.push(n.clone());
                return Some(circle);
            }
            _ => {}
        }
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for t in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(t, graph, state, stack) {
                return Some(c);
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    graph.keys().find_map(|n| visit(n, graph, &mut state, &mut Vec::new()))
}

/// Per folder (`[]` = the crate), which of its entries import which.
fn folder_graphs(
    edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
) -> BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (m, targets) in edges {
        for t in targets {
            if t.starts_with(m) {
                continue; // the door uses its own rooms
            }
            let common = m.iter().zip(t).take_while(|(a, b)| a == b).count();
            let folder = m[..common].to_vec();
            out.entry(folder).or_default().entry(m[common].clone()).or_default().insert(t[common].clone());
        }
    }
    out
}

#[test]
fn imports_go_down_the_documented_layers_and_never_circle() {
    let layers = documented_layers();
    let mut problems = Vec::new();
    for krate in crates() {
        let edges = edges(&krate);
        assert!(edges.values().map(BTreeSet::len).sum::<usize>() >= 5, "{}: the graph was read", krate.name);
        let folders = folder_graphs(&edges);
        if let Some(order) = layers.get(krate.name) {
            // Every top-level module is placed, and arrows only point to lower ones.
            let tops: BTreeSet<&String> = krate.files.keys().filter_map(|m| m.first()).collect();
            for t in &tops {
                if !order.contains(t) {
                    problems.push(format!("{}: module `{t}` is not in the layers of docs/architecture.md", krate.name));
                }
            }
            let rank = |m: &String| order.iter().position(|o| o == m);
            for (m, targets) in folders.get(&Vec::new()).into_iter().flatten() {
                for t in targets {
                    if let (Some(a), Some(b)) = (rank(m), rank(t)) {
                        if b >= a {
                            problems.push(format!("{}: `{m}` imports `{t}`, which is not below it", krate.name));
                        }
                    }
                }
            }
        } else {
            assert!(krate.name.contains("binary"), "docs/architecture.md gives no layers for {}", krate.name);
        }
        for (folder, graph) in &folders {
            if let Some(circle) = find_circle(graph) {
                problems.push(format!("{}: a circle in `{}`: {}", krate.name, folder.join("/"), circle.join(" → ")));
            }
        }
        // Reaching a module through the crate root hides which room it is in.
        for (m, targets) in &edges {
            if targets.contains(&Vec::new()) && !m.is_empty() {
                problems.push(format!("{}: `{}` imports through the crate root", krate.name, m.join("/")));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_graph_reader_sees_use_trees_inline_paths_and_skips_comments_and_strings() {
    let code = code_of(
        "use super::{a::{b, c}, d as e};\nuse crate::x::y;\n// use crate::hidden;\nlet s = \"crate::str\";\n\
         let c = '\"'; fn f() { crate::z::w(); }\n#[cfg(test)]\nmod tests { use crate::t; }",
    );
    let mut got = paths_of(&code);
    got.sort();
    let want: Vec<Vec<&str>> = vec![
        vec!["crate", "x", "y"],
        vec!["crate", "x", "y"],
        vec!["crate", "z", "w"],
        vec!["super"],
        vec!["super", "a", "b"],
        vec!["super", "a", "c"],
        vec!["super", "d"],
    ];
    assert_eq!(got, want);
    let modules: BTreeSet<ModPath> =
        [vec![], vec!["m".to_string()], vec!["m".into(), "a".into()]].into_iter().collect();
    let here = vec!["m".to_string(), "k".to_string()];
    let target = resolve(&["super".into(), "a".into(), "b".into()], &here, &modules);
    assert_eq!(target, Some(vec!["m".to_string(), "a".to_string()]));
    let mut circle: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    circle.entry("a".into()).or_default().insert("b".into());
    assert_eq!(find_circle(&circle), None);
    circle.entry("b".into()).or_default().insert("a".into());
    assert_eq!(find_circle(&circle), Some(vec!["a".into(), "b".into(), "a".into()]));
}

#[test]
fn no_source_cites_an_outside_spec() {
    // The repository stands on its own: docs/architecture.md is the reference.
    let mut files = Vec::new();
    for dir in ["src", "crates/detris-io/src", "crates/detris-io/tests", "tests"] {
        rust_files(&Path::new(ROOT).join(dir), &mut files);
    }
    let citing: Vec<String> = files
        .iter()
        .filter(|f| std::fs::read_to_string(f).unwrap().contains(concat!("spec ", "§")))
        .map(|f| f.strip_prefix(ROOT).unwrap().display().to_string())
        .collect();
    assert!(files.len() > 50 && citing.is_empty(), "{} files read; citing: {citing:?}", files.len());
}
