//! The module layering of `src/`, checked: every top-level module may use
//! only modules listed before it in `LAYERS` (vocabulary at the bottom, HTTP
//! at the edges), so there is no import cycle between modules, and none
//! between the files of one module either. Test modules are left out: a
//! test may use anything.
//!
//! A new module goes into `LAYERS` where its dependencies put it; if it
//! cannot be placed, the design has a cycle to break first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. `lib` and `main` sit above everything.
const LAYERS: &[&str] = &[
    // vocabulary
    "channel",
    "origin",
    "wire",
    "routing",
    "template",
    "values",
    // configuration and infrastructure
    "tls",
    "config",
    "metrics",
    "shutdown",
    "logging",
    // the hub and the outbound client, and telemetry (which exports through it)
    "hub",
    "outbound",
    "telemetry", // capabilities
    "auth",
    "grip",
    "record",
    "sources",
    "stream",
    // the handles every handler shares, then HTTP at the edge
    "gateway",
    "http",
    "upgrade",
    "hangup",
    "app",
    "demo",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` → ["a", "b"]; `src/a/mod.rs` → ["a"]; lib/main → [].
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

/// The code of a file without its test modules, comments and string literals.
fn code_of(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = String::with_capacity(text.len());
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i += 2;
            while i + 1 < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    out
}

/// Every `crate::a::b…` path a file names, as module paths (`use
/// crate::{a, b::c}` groups included), plus `super::` paths resolved.
fn uses(module: &[String], code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (start, _) in code.match_indices("crate::") {
        if start > 0 && code[..start].ends_with(|c: char| ident(c) || c == '$') {
            continue;
        }
        let rest = &code[start + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let path: Vec<String> = item
                    .split("::")
                    .map(|p| p.trim().trim_start_matches('{').to_string())
                    .take_while(|p| !p.is_empty() && p.chars().all(ident))
                    .collect();
                if !path.is_empty() {
                    out.push(path);
                }
            }
            continue;
        }
        // `a::b::c(…)`: segments up to the first one that is not only an
        // identifier (the call, the `;`, the end of the path).
        let mut path = Vec::new();
        for seg in rest.split("::") {
            let name: String = seg.chars().take_while(|c| ident(*c)).collect();
            let whole = name.len() == seg.len();
            if !name.is_empty() {
                path.push(name);
            }
            if !whole || path.is_empty() {
                break;
            }
        }
        if !path.is_empty() {
            out.push(path);
        }
    }
    // `super::x` names a sibling of this file's module: in a/b.rs it is
    // a::x, in a/mod.rs the crate's x.
    let parent = &module[..module.len().saturating_sub(1)];
    for (start, _) in code.match_indices("super::") {
        if start > 0 && code[..start].ends_with(|c: char| ident(c) || c == ':') {
            continue;
        }
        let rest = &code[start + "super::".len()..];
        let first: String = rest.chars().take_while(|c| ident(*c)).collect();
        if !first.is_empty() {
            let mut p = parent.to_vec();
            p.push(first);
            out.push(p);
        }
    }
    out
}

struct Crate {
    /// File → module path.
    modules: BTreeMap<PathBuf, Vec<String>>,
    /// File → module paths it names.
    edges: BTreeMap<PathBuf, Vec<Vec<String>>>,
}

fn read_crate() -> Crate {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut modules = BTreeMap::new();
    let mut edges = BTreeMap::new();
    for f in all {
        let m = module_of(&src, &f);
        let text = std::fs::read_to_string(&f).expect("readable source");
        edges.insert(f.clone(), uses(&m, &code_of(&text)));
        modules.insert(f, m);
    }
    Crate { modules, edges }
}

#[test]
fn every_module_uses_only_lower_layers() {
    let krate = read_crate();
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut problems = Vec::new();
    for (file, module) in &krate.modules {
        let Some(own) = module.first() else { continue };
        let Some(own_rank) = rank(own) else {
            problems.push(format!(
                "{}: top-level module `{own}` is not in LAYERS (tests/architecture.rs)",
                file.display()
            ));
            continue;
        };
        for path in &krate.edges[file] {
            let target = &path[0];
            if target == own {
                continue;
            }
            match rank(target) {
                Some(r) if r < own_rank => {}
                Some(_) => problems.push(format!(
                    "{}: `{own}` uses `crate::{}`, which is not below it in LAYERS",
                    file.display(),
                    path.join("::")
                )),
                None => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn no_import_cycle_between_the_files_of_a_module() {
    let krate = read_crate();
    let by_module: BTreeMap<&Vec<String>, &PathBuf> =
        krate.modules.iter().map(|(f, m)| (m, f)).collect();
    // The file a path lands in: its longest module prefix that is a file.
    let resolve = |path: &[String]| -> Option<&PathBuf> {
        (1..=path.len())
            .rev()
            .find_map(|n| by_module.get(&path[..n].to_vec()).copied())
    };
    let mut graph: BTreeMap<&PathBuf, BTreeSet<&PathBuf>> = BTreeMap::new();
    for (file, paths) in &krate.edges {
        let own = &krate.modules[file];
        for p in paths {
            let Some(target) = resolve(p) else { continue };
            let tm = &krate.modules[target];
            // A parent (mod.rs) and its children are one family: a parent
            // re-exporting its children is not a cycle.
            if target == file || tm.starts_with(own) || own.starts_with(tm) {
                continue;
            }
            graph.entry(file).or_default().insert(target);
        }
    }
    // Depth-first search for a back edge.
    fn visit<'a>(
        n: &'a PathBuf,
        g: &BTreeMap<&'a PathBuf, BTreeSet<&'a PathBuf>>,
        state: &mut BTreeMap<&'a PathBuf, u8>,
        stack: &mut Vec<&'a PathBuf>,
    ) -> Option<Vec<&'a PathBuf>> {
        state.insert(n, 1);
        stack.push(n);
        for m in g.get(n).into_iter().flatten() {
            match state.get(m) {
                Some(1) => {
                    let at = stack.iter().position(|x| x == m).unwrap_or(0);
                    return Some(stack[at..].to_vec());
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n, 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in krate.modules.keys() {
        if !state.contains_key(n) {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(n, &graph, &mut state, &mut stack) {
                let names: Vec<String> = cycle.iter().map(|p| p.display().to_string()).collect();
                panic!("import cycle: {}", names.join(" -> "));
            }
        }
    }
}

#[test]
fn the_checker_sees_uses() {
    let m = vec!["a".to_string(), "b".to_string()];
    let code = code_of("use crate::{x::y, z};\nfn f() { crate::w::v(); super::s::t(); }\n// crate::comment\nlet s = \"crate::string\";");
    let found = uses(&m, &code);
    for want in [vec!["x", "y"], vec!["z"], vec!["w", "v"], vec!["a", "s"]] {
        let want: Vec<String> = want.into_iter().map(String::from).collect();
        assert!(found.contains(&want), "{want:?} in {found:?}");
    }
    assert!(!found.iter().any(|p| p[0] == "comment" || p[0] == "string"));
}
