//! The shape of `src/queue` (issue 21), checked: the engine is cut into owned
//! parts whose imports form no circle, few imports point back up to an
//! ancestor module, no file outgrows a reader, and the composition root
//! (`Shared`) exposes no field.
//!
//! The imports are read from the source with a small scanner (comments and
//! string literals skipped, `use` trees expanded, inline `super::`/`crate::`
//! paths included) and resolved to the module that *defines* each item,
//! following re-exports. An import of module `a::b::c` from `a::x::y` is an
//! edge `b → x`... at the level of their common ancestor `a`: the parts of
//! one directory must import one another without a circle. An import of an
//! item defined in an ancestor module points back up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Most imports that may point back up to an ancestor module.
const MAX_BACK_UP: usize = 8;
/// Most lines a file of `src/queue` may have.
const MAX_LINES: usize = 700;

type Module = Vec<String>;

struct Source {
    file: PathBuf,
    text: String,
    lines: usize,
    /// An inline `mod name { .. }` of its file.
    inline: bool,
}

/// Takes the top-level inline modules out of `text`: (name, body).
fn inline_modules(text: &mut String) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = text[from..].find("mod ") {
        let at = from + k;
        from = at + 4;
        if text[..at].chars().next_back().is_some_and(ident_char) {
            continue;
        }
        let rest = &text[at + 4..];
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| ident_char(*c))
            .collect();
        let after = rest.trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = text.len() - after.len();
        let mut depth = 0;
        let mut end = open;
        for (i, c) in text[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, text[open + 1..end].to_string()));
        text.replace_range(open + 1..end, "");
        from = open + 1;
    }
    out
}

/// Every module of the crate, by path (`["queue", "log"]`), with its source.
fn modules(src: &Path) -> BTreeMap<Module, Source> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(src).unwrap();
            let mut m: Module = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            // The binary's root (`main.rs`) keeps its own name; the
            // library's is the crate root.
            if m.last().is_some_and(|l| l == "mod" || l == "lib") {
                m.pop();
            }
            let raw = std::fs::read_to_string(&p).unwrap();
            let mut text = strip(&raw);
            // Inline modules (`mod tests { .. }`) are modules of their own.
            for (name, body) in inline_modules(&mut text) {
                let mut inner = m.clone();
                inner.push(name);
                out.insert(
                    inner,
                    Source {
                        file: p.clone(),
                        lines: 0,
                        text: body,
                        inline: true,
                    },
                );
            }
            out.insert(
                m,
                Source {
                    file: p.clone(),
                    lines: raw.lines().count(),
                    text,
                    inline: false,
                },
            );
        }
    }
    out
}

/// The source without comments, string and char literals (each replaced by
/// a space), and without `#[cfg(test)] mod tests { .. }` blocks' influence
/// kept: tests count like the rest.
fn strip(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if b[i] == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // Raw string r"..." / r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(b[i] as char);
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                j += 1;
            }
            i = j + close.len();
            out.push(' ');
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else if b[i] == b'\'' && (b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\')))
        {
            // A char literal ('x', '\n', '\''), not a lifetime.
            i += 1;
            if b[i] == b'\\' {
                i += 1;
            }
            while i < b.len() && b[i] != b'\'' {
                i += 1;
            }
            i += 1;
            out.push(' ');
        } else {
            let ch = s[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a `use` tree (`super::{a::B, c}`) into paths.
fn expand(tree: &str) -> Vec<String> {
    // `X as Y` names X; then whitespace goes.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut kept = Vec::new();
    let mut k = 0;
    while k < words.len() {
        if words[k] == "as" && k + 1 < words.len() {
            // Keep what follows the alias (a `,` or `}`).
            let alias = words[k + 1];
            let tail = alias.trim_start_matches(ident_char);
            kept.push(tail);
            k += 2;
        } else {
            kept.push(words[k]);
            k += 1;
        }
    }
    let tree: String = kept.concat();
    fn go(prefix: &str, t: &str, out: &mut Vec<String>) {
        if let Some(open) = t.find('{') {
            let head = &t[..open];
            let inner = &t[open + 1..t.rfind('}').unwrap()];
            let mut depth = 0;
            let mut start = 0;
            let ib = inner.as_bytes();
            for (k, &c) in ib.iter().enumerate() {
                match c {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    b',' if depth == 0 => {
                        go(&format!("{prefix}{head}"), &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            go(&format!("{prefix}{head}"), &inner[start..], out);
        } else if !t.is_empty() {
            let path = format!("{prefix}{t}");
            out.push(path.trim_end_matches("::self").to_string());
        }
    }
    let mut out = Vec::new();
    go("", &tree, &mut out);
    out
}

/// Every path a module names: its `use` items, expanded, and inline paths
/// starting with `super::`, `self::` or `crate::`.
fn paths(text: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    // `use` items.
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(k) = text[i..].find("use ") {
        let at = i + k;
        i = at + 4;
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| ident_char(c) || c == ':') {
            continue;
        }
        let Some(end) = text[at..].find(';') else {
            break;
        };
        let tree = &text[at + 4..at + end];
        let reexport =
            text[..at].trim_end().ends_with(')') || text[..at].trim_end().ends_with("pub");
        for p in expand(tree) {
            out.push((reexport, p));
        }
        i = at + end;
    }
    // Inline paths.
    for start in ["super::", "self::", "crate::"] {
        let mut i = 0;
        while let Some(k) = text[i..].find(start) {
            let at = i + k;
            i = at + start.len();
            if at > 0 && (ident_char(b[at - 1] as char) || b[at - 1] == b':') {
                continue;
            }
            let mut j = at;
            while j < b.len() && (ident_char(b[j] as char) || b[j] == b':') {
                j += 1;
            }
            out.push((false, text[at..j].trim_end_matches(':').to_string()));
        }
    }
    out
}

/// Names a module defines itself (not by `use`).
fn defines(text: &str, name: &str) -> bool {
    [
        "struct",
        "enum",
        "fn",
        "const",
        "static",
        "type",
        "trait",
        "mod",
        "macro_rules!",
    ]
    .iter()
    .any(|kw| {
        let pat = format!("{kw} {name}");
        text.match_indices(&pat).any(|(at, _)| {
            let after = text[at + pat.len()..].chars().next();
            let before = text[..at].chars().next_back();
            !after.is_some_and(ident_char) && !before.is_some_and(ident_char)
        })
    })
}

struct Crate {
    mods: BTreeMap<Module, Source>,
}

impl Crate {
    /// Resolves `path` named in module `from` to the module defining the
    /// item (following re-exports), and the item's name.
    fn resolve(&self, from: &Module, path: &str, depth: usize) -> Option<(Module, Option<String>)> {
        let mut segs = path.split("::").filter(|s| !s.is_empty());
        let first = segs.next()?;
        let mut m: Module = match first {
            "crate" => vec![],
            "self" => from.clone(),
            "super" => {
                let mut m = from.clone();
                m.pop();
                m
            }
            child => {
                let mut m = from.clone();
                m.push(child.to_string());
                if !self.mods.contains_key(&m) {
                    return None;
                }
                m
            }
        };
        let mut rest: Vec<&str> = segs.collect();
        while rest.first() == Some(&"super") {
            m.pop();
            rest.remove(0);
        }
        let mut item = None;
        for s in rest {
            let mut next = m.clone();
            next.push(s.to_string());
            if self.mods.contains_key(&next) && item.is_none() {
                m = next;
            } else {
                item = Some(s.to_string());
                break;
            }
        }
        if let Some(name) = &item
            && depth < 8
            && !defines(&self.mods.get(&m)?.text, name)
        {
            // A re-export (`pub(crate) use x::Name`): follow it.
            let text = &self.mods.get(&m)?.text;
            for (_, p) in paths(text) {
                if p.rsplit("::").next() == Some(name.as_str())
                    && let Some(r) = self.resolve(&m, &p, depth + 1)
                {
                    return Some(r);
                }
            }
        }
        Some((m, item))
    }
}

struct Report {
    /// (level, from part, to part) → an example (file, path).
    edges: BTreeMap<(Module, String, String), (PathBuf, String)>,
    back_up: Vec<(PathBuf, String)>,
}

fn analyse(root: &Module) -> (Crate, Report) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let krate = Crate {
        mods: modules(&src),
    };
    let mut report = Report {
        edges: BTreeMap::new(),
        back_up: Vec::new(),
    };
    for (m, source) in &krate.mods {
        if !m.starts_with(root) {
            continue;
        }
        let mut seen = BTreeSet::new();
        for (_, p) in paths(&source.text) {
            let Some((target, item)) = krate.resolve(m, &p, 0) else {
                continue;
            };
            if !target.starts_with(root)
                || &target == m
                || !seen.insert((target.clone(), item.clone()))
            {
                continue;
            }
            // A module's tests (inline, or `tests.rs` beside it) naming the
            // module's items are part of it.
            let tests_of = |m: &Module| source.inline || m.last().is_some_and(|l| l == "tests");
            if tests_of(m) && m[..m.len() - 1] == target[..] {
                continue;
            }
            // So are the submodules of a `tests` module naming its fixtures
            // or the tested module's items.
            if let Some(i) = m.iter().position(|l| l == "tests")
                && i + 1 < m.len()
                && target.starts_with(&m[..i])
            {
                continue;
            }
            if m.starts_with(&target) {
                // An item defined by an ancestor: points back up (a child
                // naming its own submodule through the parent does not).
                if item.is_some() {
                    report.back_up.push((source.file.clone(), p.clone()));
                }
                continue;
            }
            if target.starts_with(m) {
                continue;
            }
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let level: Module = m[..common].to_vec();
            report
                .edges
                .entry((level, m[common].clone(), target[common].clone()))
                .or_insert((source.file.clone(), p.clone()));
        }
    }
    (krate, report)
}

/// The circles among the parts of each directory (strongly connected
/// components of more than one part).
fn circles(report: &Report) -> Vec<(Module, Vec<String>)> {
    let mut levels: BTreeMap<Module, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (level, from, to) in report.edges.keys() {
        levels
            .entry(level.clone())
            .or_default()
            .entry(from.clone())
            .or_default()
            .insert(to.clone());
    }
    let mut out = Vec::new();
    for (level, graph) in levels {
        // Reachability closure: small graphs.
        let nodes: BTreeSet<String> = graph
            .iter()
            .flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned()))
            .collect();
        let reach = |a: &String| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut stack = vec![a.clone()];
            while let Some(n) = stack.pop() {
                for b in graph.get(&n).into_iter().flatten() {
                    if seen.insert(b.clone()) {
                        stack.push(b.clone());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<String, BTreeSet<String>> =
            nodes.iter().map(|n| (n.clone(), reach(n))).collect();
        let mut done = BTreeSet::new();
        for n in &nodes {
            if done.contains(n) || !reaches[n].contains(n) {
                continue;
            }
            let scc: Vec<String> = nodes
                .iter()
                .filter(|o| reaches[n].contains(*o) && reaches[*o].contains(n))
                .cloned()
                .collect();
            done.extend(scc.iter().cloned());
            out.push((level.clone(), scc));
        }
    }
    out
}

fn queue() -> Module {
    vec!["queue".to_string()]
}

#[test]
fn the_parts_of_the_queue_import_one_another_without_a_circle() {
    let (_, report) = analyse(&queue());
    let circles = circles(&report);
    let mut text = String::new();
    for (level, parts) in &circles {
        text += &format!("\n  in {}: {}", level.join("::"), parts.join(", "));
        for ((l, a, b), (file, path)) in &report.edges {
            if l == level && parts.contains(a) && parts.contains(b) {
                text += &format!("\n    {a} → {b}  ({}: {path})", file.display());
            }
        }
    }
    assert!(circles.is_empty(), "import circles:{text}");
}

#[test]
fn few_imports_of_the_queue_point_back_up_to_an_ancestor() {
    let (_, report) = analyse(&queue());
    let list: Vec<String> = report
        .back_up
        .iter()
        .map(|(f, p)| format!("  {}: {p}", f.display()))
        .collect();
    assert!(
        report.back_up.len() <= MAX_BACK_UP,
        "{} imports point back up (at most {MAX_BACK_UP}):\n{}",
        report.back_up.len(),
        list.join("\n")
    );
}

#[test]
fn no_file_of_the_queue_is_longer_than_a_reader_holds() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let long: Vec<String> = modules(&src)
        .iter()
        .filter(|(m, s)| m.starts_with(&queue()) && s.lines > MAX_LINES)
        .map(|(_, s)| format!("  {}: {} lines", s.file.display(), s.lines))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_composition_root_exposes_no_field() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    let (_, shared) = mods
        .iter()
        .find(|(m, s)| {
            m.starts_with(&queue())
                && defines(&s.text, "Shared")
                && s.text.contains("struct Shared {")
        })
        .expect("a `struct Shared` in src/queue");
    let body = &shared.text[shared.text.find("struct Shared {").unwrap()..];
    let body = &body[..body.find("\n}").unwrap()];
    let open: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("pub"))
        .collect();
    assert!(
        open.is_empty(),
        "fields of Shared that are not private:\n  {}",
        open.join("\n  ")
    );
}

#[test]
fn the_scanner_expands_use_trees_and_follows_re_exports() {
    assert_eq!(
        expand("super::{a::B, c::{D, e::F as G}, h}"),
        ["super::a::B", "super::c::D", "super::c::e::F", "super::h"]
    );
    let (krate, _) = analyse(&queue());
    // `crate::QueueConfig` is re-exported by lib.rs from `config`.
    let (m, item) = krate.resolve(&queue(), "crate::QueueConfig", 0).unwrap();
    assert_eq!(
        (m, item.as_deref()),
        (vec!["config".to_string()], Some("QueueConfig"))
    );
}

/// DESIGN.md: "Only `queue/storage.rs` names sled." Every other file of the
/// crate speaks to the index through `Store` and `WriteBatch`.
#[test]
fn only_the_storage_file_names_sled() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut naming = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && path != src.join("queue/storage.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap();
                if strip(&text).contains("sled::") {
                    naming.push(path.strip_prefix(&src).unwrap().display().to_string());
                }
            }
        }
    }
    naming.sort();
    assert!(
        naming.is_empty(),
        "sled named outside queue/storage.rs: {naming:?}"
    );
}
