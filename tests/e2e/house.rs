//! The rules the code's shape relies on, checked over the source itself: modules import
//! each other in one direction only (no cycles in any crate, and the layers as
//! docs/architecture.md draws them), no function is longer than a screen, no impl block
//! does several jobs' worth of work, no WebSocket opcode is compared as a bare number,
//! and neither the code nor the docs speak in tracker issue numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest function, and impl block, the code may have (test modules aside).
const MAX_FN_LINES: usize = 70;
const MAX_IMPL_LINES: usize = 450;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// The crates' source folders: the daemon's and each library's.
fn crate_sources() -> Vec<PathBuf> {
    let mut dirs = vec![root().join("src")];
    let mut members: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    members.sort();
    dirs.extend(members);
    dirs
}

/// `text` with comments, string and char literals blanked out (their bytes turned to
/// spaces, line ends kept), so that braces and paths in them count for nothing.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        out[from..to].iter_mut().filter(|c| **c != b'\n').for_each(|c| *c = b' ');
    };
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..].iter().position(|c| *c == b'\n').map_or(b.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                blank(&mut out, i, end);
                i = end;
            }
            b'r' if b.get(i + 1).is_some_and(|c| *c == b'"' || *c == b'#') && (i == 0 || !is_ident(b[i - 1])) => {
                let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
                if b.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let start = i + 2 + hashes;
                let end = text[start..].find(&close).map_or(b.len(), |n| start + n + close.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < b.len() && b[j] != b'"' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                blank(&mut out, i, (j + 1).min(b.len()));
                i = j + 1;
            }
            b'\'' => {
                // A char literal ('x', '\n', '\u{..}'), or a lifetime ('a), which stays.
                let end = match (b.get(i + 1), b.get(i + 2)) {
                    (Some(b'\\'), _) => b[i + 2..].iter().position(|c| *c == b'\'').map(|n| i + 2 + n + 1),
                    (Some(_), Some(b'\'')) => Some(i + 3),
                    _ => None,
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i, end);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("only ASCII bytes were replaced")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The code of a file without its unit tests (the `#[cfg(test)] mod tests` at its end).
fn without_tests(code: &str) -> &str {
    match code.find("#[cfg(test)]\nmod tests") {
        Some(at) => &code[..at],
        None => code,
    }
}

/// Each function and impl block in `code` (comments and literals blanked): its kind,
/// first line (1-based) and length in lines.
fn blocks(code: &str) -> Vec<(&'static str, usize, usize, String)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let words: Vec<&str> = t.split(|c: char| !c.is_alphanumeric() && c != '_').filter(|w| !w.is_empty()).collect();
        let kind = match words.first() {
            Some(&"impl") => "impl",
            _ if words.iter().take(5).position(|w| *w == "fn").is_some_and(|at| {
                words[..at]
                    .iter()
                    .all(|w| matches!(*w, "pub" | "crate" | "super" | "const" | "async" | "unsafe" | "in"))
            }) =>
            {
                "fn"
            }
            _ => continue,
        };
        // From the first `{` on, to the brace that closes it; a `;` first: no body.
        let (mut depth, mut opened) = (0i32, false);
        let mut end = None;
        'scan: for (j, l) in lines.iter().enumerate().skip(i) {
            for c in l.chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    ';' if !opened => break 'scan,
                    _ => {}
                }
                if opened && depth == 0 {
                    end = Some(j);
                    break 'scan;
                }
            }
        }
        if let Some(end) = end {
            out.push((kind, i + 1, end - i + 1, t.chars().take(60).collect()));
        }
    }
    out
}

#[test]
fn no_function_or_impl_block_outgrows_one_job() {
    let mut dirs = crate_sources();
    dirs.extend(["benches", "examples", "fuzz/fuzz_targets"].map(|d| root().join(d)));
    let mut long = Vec::new();
    for file in dirs.iter().flat_map(|d| rust_files(d)) {
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for (kind, line, len, head) in blocks(without_tests(&code)) {
            let max = if kind == "fn" { MAX_FN_LINES } else { MAX_IMPL_LINES };
            if len > max {
                let shown = file.strip_prefix(root()).unwrap_or(&file).display().to_string();
                long.push(format!("{shown}:{line}: {len} lines (at most {max}): {head}"));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

/// A crate's modules (paths under its `src`, `mod.rs` standing for its folder) and the
/// modules each imports (`crate::…` and `super::…` paths in its code, tests aside).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = BTreeMap::new();
    for file in rust_files(src) {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["lib"] || parts == ["main"] || parts.first().is_some_and(|p| p == "bin") {
            continue;
        }
        files.insert(parts.join("::"), file);
    }
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let resolve = |path: &[&str]| (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| modules.contains(m));
    let mut graph = BTreeMap::new();
    for (module, file) in &files {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let code = without_tests(&code);
        let own: Vec<&str> = module.split("::").collect();
        let mut edges = BTreeSet::new();
        for path in paths(code) {
            let absolute: Vec<&str> = match path.first().copied() {
                Some("crate") => path[1..].to_vec(),
                Some("super") => {
                    // `super` is the module's parent (in a folder's `mod.rs` as anywhere).
                    let ups = path.iter().take_while(|p| **p == "super").count();
                    let base = own.len().saturating_sub(ups);
                    own[..base].iter().copied().chain(path[ups..].iter().copied()).collect()
                }
                _ => continue,
            };
            if let Some(target) = resolve(&absolute) {
                let related = target == *module
                    || target.starts_with(&format!("{module}::"))
                    || module.starts_with(&format!("{target}::"));
                if !related {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module.clone(), edges);
    }
    graph
}

/// Every `crate::…` and `super::…` path in `code`, split at `::`, with the items of a
/// `use x::{a, b::c}` group each as a path of its own.
fn paths(code: &str) -> Vec<Vec<&str>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::").chain(code.match_indices("super::")) {
        // Not the tail of a longer path (`super::super::x` is one path, not two).
        if at > 0 && (is_ident(code.as_bytes()[at - 1]) || code.as_bytes()[at - 1] == b':') {
            continue;
        }
        let rest = &code[at..];
        let end = rest.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':')).unwrap_or(rest.len());
        let path: Vec<&str> = rest[..end].split("::").filter(|p| !p.is_empty()).collect();
        if rest[end..].starts_with('{') {
            let group_end = rest[end..].find('}').map_or(rest.len(), |n| end + n);
            for item in rest[end + 1..group_end].split(',') {
                let mut full = path.clone();
                full.extend(item.trim().split("::").map(str::trim).filter(|p| !p.is_empty() && *p != "{"));
                out.push(full);
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The cycles of `graph`: its strongly connected components of more than one module.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: finish order on the graph, then components on its reverse.
    fn visit<'a>(
        v: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<&'a str>,
        out: &mut Vec<&'a str>,
    ) {
        if !seen.insert(v) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, out);
        }
        out.push(v);
    }
    let mut reverse: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in graph {
        for w in ws {
            reverse.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for v in graph.keys() {
        visit(v, graph, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.into_iter().rev() {
        let mut component = Vec::new();
        visit(v, &reverse, &mut assigned, &mut component);
        if component.len() > 1 {
            let mut names: Vec<String> = component.into_iter().map(str::to_owned).collect();
            names.sort();
            out.push(names);
        }
    }
    out
}

#[test]
fn no_crate_has_an_import_cycle() {
    for src in crate_sources() {
        let graph = module_graph(&src);
        assert!(graph.len() > 3, "{}: the modules were found", src.display());
        let found = cycles(&graph);
        assert!(found.is_empty(), "{}: modules that import each other: {found:?}", src.display());
    }
}

/// The daemon's layers, as docs/architecture.md draws them: what each may not import.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("config", &["capture", "proxy", "service", "ship"]),
    ("capture", &["proxy", "service", "ship"]),
    ("capture::outbox", &["capture::taps", "capture::write", "capture::queue"]),
    ("ship", &["proxy", "service"]),
    ("capture::taps", &["capture::write"]),
    ("capture::write", &["capture::taps"]),
    ("capture::event", &["capture::taps", "capture::write", "capture::queue"]),
    ("capture::note", &["capture::taps", "capture::write", "capture::queue"]),
    ("capture::stats", &["capture::taps", "capture::write", "capture::queue"]),
    ("capture::ids", &["capture::taps", "capture::write", "capture::queue", "capture::event", "capture::note"]),
    ("capture::queue", &["capture::taps", "capture::write"]),
    ("capture::live", &["capture::taps", "capture::write"]),
    ("capture::url", &["capture::taps", "capture::write", "capture::queue", "capture::live"]),
    ("proxy", &["service", "ship"]),
    ("sync", &["config", "capture", "proxy", "service", "ship"]),
];

#[test]
fn the_layers_import_only_downwards() {
    let graph = module_graph(&root().join("src"));
    let within = |module: &str, of: &str| module == of || module.starts_with(&format!("{of}::"));
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        for (layer, forbidden) in FORBIDDEN.iter().filter(|(layer, _)| within(module, layer)) {
            for import in imports.iter().filter(|i| forbidden.iter().any(|f| within(i, f))) {
                wrong.push(format!("{module} (in {layer}) imports {import}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
    // The check reads the imports it checks.
    assert!(graph["capture::taps::tap"].contains("capture::queue"), "{:?}", graph["capture::taps::tap"]);
}

#[test]
fn opcodes_are_compared_by_name_and_no_one_speaks_in_issue_numbers() {
    let mut found = Vec::new();
    let mut dirs = crate_sources();
    dirs.extend(["tests", "benches", "examples", "fuzz/fuzz_targets"].map(|d| root().join(d)));
    let compared = |code: &str| {
        code.match_indices("opcode").any(|(at, _)| {
            let after = code[at + "opcode".len()..].trim_start();
            let op = ["==", "!=", "<=", ">=", "<", ">"].into_iter().find(|op| after.starts_with(op));
            op.is_some_and(|op| after[op.len()..].trim_start().starts_with(|c: char| c.is_ascii_digit()))
        })
    };
    for file in dirs.iter().flat_map(|d| rust_files(d)) {
        if compared(&code_only(&std::fs::read_to_string(&file).unwrap())) {
            found.push(format!("{}: an opcode compared with a number", file.display()));
        }
    }
    let mut texts: Vec<PathBuf> =
        ["README.md", "CHANGELOG.md", "Makefile", "config/wstap.toml"].iter().map(|f| root().join(f)).collect();
    for dir in ["docs", "scripts", "src", "crates", "tests/e2e", "benches", "examples", "fuzz/fuzz_targets"] {
        texts.extend(files_under(&root().join(dir)).into_iter().filter(|f| {
            f.extension().is_some_and(|e| ["md", "rs", "sh", "toml", "py"].contains(&e.to_str().unwrap_or_default()))
        }));
    }
    for file in texts {
        let text = std::fs::read_to_string(&file).unwrap_or_default().to_lowercase();
        let numbered = text.match_indices("issue ").any(|(at, _)| {
            text[at + 6..].starts_with(|c: char| c.is_ascii_digit())
                && (at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric())
        });
        if numbered && !file.ends_with("house.rs") {
            found.push(format!("{}: a tracker issue number", file.display()));
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// A test that cannot run fails, or is `#[ignore = "needs …"]`: none prints "skipped"
/// and passes.
#[test]
fn no_test_passes_by_skipping() {
    let skippers: Vec<String> = rust_files(&root().join("tests"))
        .into_iter()
        .filter(|f| !f.ends_with("house.rs"))
        .filter(|f| std::fs::read_to_string(f).unwrap().contains("\"skipped"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(skippers.is_empty(), "tests that skip and pass: {skippers:?}");
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_checks_see_what_they_check() {
    let code =
        code_only("fn a() {\n    let s = \"}\"; // }\n    let c = '{';\n}\nimpl X {\n    fn b<'a>(x: &'a u8) {}\n}\n");
    let found: Vec<(&str, usize, usize)> = blocks(&code).into_iter().map(|(k, l, n, _)| (k, l, n)).collect();
    assert_eq!(found, [("fn", 1, 4), ("impl", 5, 3), ("fn", 6, 1)]);
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a")]
        .iter()
        .map(|(v, w)| (v.to_string(), BTreeSet::from([w.to_string()])))
        .collect();
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
    let p = paths("use crate::capture::{event::Event, note};\nlet x = super::super::taps::Tap;");
    assert_eq!(
        p,
        [
            vec!["crate", "capture", "event", "Event"],
            vec!["crate", "capture", "note"],
            vec!["super", "super", "taps", "Tap"]
        ]
    );
}
