//! The one-way layers of `tether-server`, checked from the source: every `crate::` path (and
//! every `super::` path that climbs out of its module) in `src/` must name a module that its
//! own module may import, as [`LAYERS`] lists them. A lower layer never reaches up; it
//! reports upward through what it is handed (the broker's event sink, a connection's control
//! messages, the API router given to the transports). `docs/architecture.md` explains the
//! table.
//!
//! `TETHER_LAYERS_SRC=<dir>` checks another tree's `src/` (an older checkout, say) instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the library, from the top down, with the modules it may import.
/// `main.rs` is the binary: it uses the library's public API and is not checked here.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "server",
        &[
            "api",
            "consumers",
            "transport",
            "session",
            "node",
            "events",
            "proxy",
            "cluster",
            "hub",
            "wire",
            "broker",
            "auth",
            "config",
            "metrics",
            "delta",
            "small",
        ],
    ),
    (
        "api",
        &[
            "command", "node", "events", "cluster", "hub", "wire", "broker", "auth", "config",
            "metrics", "breaker",
        ],
    ),
    (
        "consumers",
        &["command", "node", "proxy", "broker", "config", "metrics"],
    ),
    (
        "command",
        &[
            "node", "events", "cluster", "hub", "wire", "broker", "config",
        ],
    ),
    (
        "transport",
        &[
            "session", "node", "hub", "wire", "broker", "auth", "config", "metrics",
        ],
    ),
    (
        "session",
        &[
            "node", "events", "proxy", "cluster", "hub", "wire", "broker", "auth", "config",
            "metrics", "delta", "small",
        ],
    ),
    (
        "node",
        &[
            "events", "proxy", "cluster", "hub", "wire", "broker", "auth", "config", "metrics",
            "breaker",
        ],
    ),
    (
        "events",
        &["proxy", "hub", "wire", "broker", "config", "metrics"],
    ),
    ("proxy", &["config", "metrics", "breaker"]),
    ("cluster", &["hub", "wire", "broker"]),
    ("hub", &["wire", "broker", "metrics", "delta", "small"]),
    ("wire", &["broker"]),
    ("broker", &["breaker"]),
    ("config", &["auth"]),
    ("auth", &[]),
    ("metrics", &[]),
    ("delta", &[]),
    ("small", &[]),
    ("breaker", &[]),
];

/// One import that breaks the table.
#[derive(Debug)]
struct Violation {
    file: String,
    line: usize,
    from: String,
    to: String,
}

#[test]
fn every_module_imports_only_the_layers_below_it() {
    let src = std::env::var_os("TETHER_LAYERS_SRC").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        PathBuf::from,
    );
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(module, may)| (*module, may.iter().copied().collect()))
        .collect();
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).expect("under src").to_path_buf();
        let Some((module, depth)) = module_of(&rel) else {
            continue;
        };
        let Some(may) = allowed.get(module.as_str()) else {
            unknown.insert(module);
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (line, target) in imports(&text, depth) {
            if target != module
                && !may.contains(target.as_str())
                && allowed.contains_key(target.as_str())
            {
                violations.push(Violation {
                    file: rel.display().to_string(),
                    line,
                    from: module.clone(),
                    to: target,
                });
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS (give each a row): {unknown:?}"
    );
    let report: Vec<String> = violations
        .iter()
        .map(|v| format!("{}:{}: {} imports {}", v.file, v.line, v.from, v.to))
        .collect();
    assert!(
        violations.is_empty(),
        "{} imports reach a layer their module may not import:\n{}",
        violations.len(),
        report.join("\n")
    );
}

#[test]
fn the_layer_table_has_no_circle() {
    // A depth-first walk over "may import": a grey node met again is a circle.
    let table: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    fn visit<'a>(
        module: &'a str,
        table: &BTreeMap<&'a str, &'a [&'a str]>,
        state: &mut BTreeMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) {
        match state.get(module) {
            Some(true) => return,
            Some(false) => panic!("circle in LAYERS: {} -> {module}", path.join(" -> ")),
            None => {}
        }
        state.insert(module, false);
        path.push(module);
        for next in table.get(module).copied().unwrap_or_default() {
            assert!(
                table.contains_key(next),
                "{module} may import {next}, which has no row"
            );
            visit(next, table, state, path);
        }
        path.pop();
        state.insert(module, true);
    }
    let mut state = BTreeMap::new();
    for module in table.keys() {
        visit(module, &table, &mut state, &mut Vec::new());
    }
}

#[test]
fn the_scanner_sees_grouped_nested_and_climbing_paths() {
    let text = "use crate::{hub::Conn, node::{Node, Now}};\n\
                // crate::api in a comment is no import\n\
                fn f() { crate::session::go(); let _ = \"crate::server\"; }\n\
                use super::super::cluster::Cluster;\n";
    let found: Vec<(usize, String)> = imports(text, 2);
    let names: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(names, ["hub", "node", "session", "cluster"], "{found:?}");
    assert_eq!(found[2].0, 3);
    // From a depth-1 file, one `super` only reaches its own module's parent: the crate.
    assert_eq!(imports("use super::hub::X;", 1), [(1, "hub".to_owned())]);
    assert!(imports("use super::conn::X;", 2).is_empty());
}

/// The top-level module a file belongs to, and how deep its module sits below the crate
/// root (`hub/conn.rs` is `hub::conn`: 2; `hub/mod.rs` and `node.rs`: 1). `None` for the
/// crate roots.
fn module_of(rel: &Path) -> Option<(String, usize)> {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let first = parts.first()?;
    if parts.len() == 1 && (first == "lib.rs" || first == "main.rs") {
        return None;
    }
    let module = first.trim_end_matches(".rs").to_owned();
    let last = parts.last()?;
    let depth = if last == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    };
    Some((module, depth))
}

/// The top-level modules that `text` names through `crate::` paths, or through `super::`
/// chains that climb to the crate root from a module `depth` levels down, with their lines.
/// Comments and string literals are skipped.
fn imports(text: &str, depth: usize) -> Vec<(usize, String)> {
    let code = strip_comments_and_strings(text);
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let boundary = i == 0 || !is_ident(bytes[i - 1]) && bytes[i - 1] != b':';
        if boundary && code[i..].starts_with("crate::") {
            let after = i + "crate::".len();
            roots_at(&code, after, &mut found);
            i = after;
            continue;
        }
        if boundary && code[i..].starts_with("super::") {
            let mut at = i;
            let mut climbs = 0;
            while code[at..].starts_with("super::") {
                climbs += 1;
                at += "super::".len();
            }
            if climbs >= depth {
                roots_at(&code, at, &mut found);
            }
            i = at;
            continue;
        }
        i += 1;
    }
    found
        .into_iter()
        .map(|(at, name)| (code[..at].matches('\n').count() + 1, name))
        .collect()
}

/// The first segment of the path at `at` (`hub` of `hub::Conn`), or each first segment of a
/// group (`{hub::Conn, node::{Node, Now}}`).
fn roots_at(code: &str, at: usize, found: &mut Vec<(usize, String)>) {
    let rest = &code[at..];
    if let Some(group) = rest.strip_prefix('{') {
        let mut level = 0usize;
        let mut start = true;
        for (offset, ch) in group.char_indices() {
            match ch {
                '{' => level += 1,
                '}' if level == 0 => return,
                '}' => level -= 1,
                ',' if level == 0 => start = true,
                c if start && level == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                    let name: String = group[offset..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    found.push((at + 1 + offset, name));
                    start = false;
                }
                _ => {}
            }
        }
        return;
    }
    let name: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if !name.is_empty() && name != "self" {
        found.push((at, name));
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The source with comments and the insides of string literals blanked (newlines kept, so
/// byte offsets still give line numbers). Good enough for this crate's code: raw strings
/// with `#` and char literals holding a quote are handled; nothing else exotic is used.
fn strip_comments_and_strings(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let blank = |b: u8| if b == b'\n' { b'\n' } else { b' ' };
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
            while i < bytes.len() && bytes[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b == b'/' && bytes.get(i + 1) == Some(&b'*') {
            let mut level = 0;
            while i < bytes.len() {
                if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                    level += 1;
                    out.extend([b' ', b' ']);
                    i += 2;
                } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                    level -= 1;
                    out.extend([b' ', b' ']);
                    i += 2;
                    if level == 0 {
                        break;
                    }
                } else {
                    out.push(blank(bytes[i]));
                    i += 1;
                }
            }
        } else if b == b'r'
            && (i == 0 || !is_ident(bytes[i - 1]))
            && matches!(bytes.get(i + 1), Some(b'"' | b'#'))
        {
            // A raw string: r"…", r#"…"#, …
            let mut j = i + 1;
            let mut hashes = 0;
            while bytes.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if bytes.get(j) != Some(&b'"') {
                out.push(b);
                i += 1;
                continue;
            }
            out.extend(std::iter::repeat_n(b' ', j + 1 - i));
            i = j + 1;
            while i < bytes.len() {
                if bytes[i] == b'"'
                    && bytes[i + 1..]
                        .iter()
                        .take(hashes)
                        .filter(|&&c| c == b'#')
                        .count()
                        == hashes
                {
                    out.extend(std::iter::repeat_n(b' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                out.push(blank(bytes[i]));
                i += 1;
            }
        } else if b == b'"' {
            out.push(b' ');
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    out.push(b' ');
                    i += 1;
                }
                if i < bytes.len() {
                    out.push(blank(bytes[i]));
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if b == b'\'' && bytes.get(i + 2) == Some(&b'\'') {
            // A one-character char literal ('"' among them).
            out.extend([b' ', b' ', b' ']);
            i += 3;
        } else if b == b'\'' && bytes.get(i + 1) == Some(&b'\\') {
            // An escaped char literal: '\'' , '\\', '\n', '\u{..}'.
            let close = bytes[i + 2..]
                .iter()
                .skip(1)
                .position(|&c| c == b'\'')
                .map_or(bytes.len(), |p| i + 3 + p + 1);
            out.extend(std::iter::repeat_n(b' ', close.min(bytes.len()) - i));
            i = close;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Every `.rs` file below `dir`, sorted, so the report is stable.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable src dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
