//! The architecture's invariants that a reading of the sources can check (ARCHITECTURE.md,
//! "Invariants"): environment variables are read only in `engine/src/config.rs`, metric names
//! are declared only in `actors/src/metrics.rs`, and `actors` has no network, file or database
//! code. Each check names the file and line that breaks it.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_owned()
}

/// Every `.rs` file under `dir` (relative to the workspace), sorted.
fn sources(dir: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&workspace().join(dir), &mut out);
    out.sort();
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The file's lines with `//` comments (doc comments included) cut off, numbered from 1.
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            let code = match line.find("//") {
                // Not a comment inside a string such as "http://": keep what follows a quote.
                Some(at) if line[..at].matches('"').count() % 2 == 0 => &line[..at],
                _ => line,
            };
            (i + 1, code.to_owned())
        })
        .collect()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `token` occurs in `line` not as part of a longer identifier.
fn has_token(line: &str, token: &str) -> bool {
    line.match_indices(token).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + token.len()..].chars().next();
        before.is_none_or(|c| !is_ident(c))
            && (!token.ends_with(is_ident) || after.is_none_or(|c| !is_ident(c)))
    })
}

/// `file:line: text` for every line of `files` holding one of `tokens`.
fn occurrences(files: &[PathBuf], tokens: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        for (n, line) in code_lines(file) {
            if let Some(token) = tokens.iter().find(|t| has_token(&line, t)) {
                found.push(format!(
                    "{}:{n}: `{token}` in {}",
                    relative(file),
                    line.trim()
                ));
            }
        }
    }
    found
}

fn engine_and_actors() -> Vec<PathBuf> {
    let mut files = sources("engine/src");
    files.extend(sources("actors/src"));
    files
}

/// Ways a Rust program reads its environment.
const ENV_READS: &[&str] = &[
    "std::env",
    "env::var",
    "env::var_os",
    "env::vars",
    "env::vars_os",
    "var_os",
    "from_default_env",
    "try_from_default_env",
    "from_env",
    "try_from_env",
    "Env::prefixed",
    "Env::raw",
    "env = \"",
];

/// Reads outside `config.rs` that are known and why they stay: each is a whole code line.
const ENV_READS_ALLOWED: &[(&str, &str)] = &[];

#[test]
fn environment_variables_are_read_only_in_the_config_module() {
    let files: Vec<PathBuf> = engine_and_actors()
        .into_iter()
        .filter(|f| !f.ends_with("engine/src/config.rs"))
        .collect();
    let mut allowed_seen = 0;
    let mut found = Vec::new();
    for file in &files {
        for (n, line) in code_lines(file) {
            let Some(token) = ENV_READS.iter().find(|t| has_token(&line, t)) else {
                continue;
            };
            let allowed = ENV_READS_ALLOWED
                .iter()
                .any(|(f, l)| relative(file) == *f && line.trim() == *l);
            if allowed {
                allowed_seen += 1;
            } else {
                found.push(format!(
                    "{}:{n}: `{token}` in {}",
                    relative(file),
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the environment is read outside engine/src/config.rs:\n{}",
        found.join("\n")
    );
    assert_eq!(
        allowed_seen,
        ENV_READS_ALLOWED.len(),
        "an allowed read is gone: take it out of ENV_READS_ALLOWED"
    );
    // The scan sees what it looks for: config.rs itself reads the environment.
    let config = sources("engine/src")
        .into_iter()
        .filter(|f| f.ends_with("config.rs"))
        .collect::<Vec<_>>();
    assert!(!occurrences(&config, ENV_READS).is_empty());
}

/// The names of the constants `actors/src/metrics.rs` declares.
fn declared_metrics() -> Vec<String> {
    let path = workspace().join("actors/src/metrics.rs");
    code_lines(&path)
        .into_iter()
        .filter_map(|(_, line)| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, ty) = rest.split_once(':')?;
            ty.trim_start()
                .starts_with("&str")
                .then(|| name.trim().to_owned())
        })
        .collect()
}

const METRIC_MACROS: &[&str] = &[
    "counter!(",
    "gauge!(",
    "histogram!(",
    "describe_counter!(",
    "describe_gauge!(",
    "describe_histogram!(",
];

/// The first argument of every metrics macro call in `file`: (line, argument text).
fn metric_macro_names(file: &Path) -> Vec<(usize, String)> {
    let lines = code_lines(file);
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let mut found = Vec::new();
    for mac in METRIC_MACROS {
        for (at, _) in text.match_indices(mac) {
            if text[..at].chars().next_back().is_some_and(is_ident) {
                continue; // `describe_counter!(` when looking for `counter!(`
            }
            let line = text[..at].matches('\n').count() + 1;
            let arg: String = text[at + mac.len()..]
                .trim_start()
                .chars()
                .take_while(|c| *c != ',' && *c != ')')
                .collect();
            found.push((line, arg.trim().to_owned()));
        }
    }
    found
}

/// A metrics macro at `line` names its metric by `param`, a parameter of the function around
/// it: the first argument of each call of that function in the same file, with its line.
fn forwarded(file: &Path, line: usize, param: &str) -> Vec<(usize, String)> {
    let lines = code_lines(file);
    let function = lines[..line].iter().rev().find_map(|(_, l)| {
        let rest = &l[l.find("fn ")? + 3..];
        let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        rest[name.len()..]
            .contains(&format!("({param}:"))
            .then_some(name)
    });
    let Some(function) = function else {
        return vec![(line, param.to_owned())];
    };
    // A method is called through its type: `Type::function(`.
    let fn_line = lines[..line]
        .iter()
        .rposition(|(_, l)| l.contains(&format!("fn {function}(")))
        .unwrap_or(0);
    let owner = lines[..fn_line].iter().rev().find_map(|(_, l)| {
        let rest = l.trim_start().strip_prefix("impl")?;
        let rest = rest.trim_start_matches(|c: char| c != ' ').trim_start();
        let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
        (!name.is_empty()).then_some(name)
    });
    let function = match owner {
        Some(owner) => format!("{owner}::{function}"),
        None => function,
    };
    let calls: Vec<(usize, String)> = lines
        .iter()
        .flat_map(|(n, l)| {
            l.match_indices(&format!("{function}("))
                .filter(|(at, _)| !l[..*at].ends_with("fn ") && !l[..*at].ends_with(is_ident))
                .map(|(at, m)| {
                    let arg: String = l[at + m.len()..]
                        .chars()
                        .take_while(|c| *c != ',' && *c != ')')
                        .collect();
                    (*n, arg.trim().to_owned())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if calls.is_empty() {
        return vec![(line, param.to_owned())];
    }
    calls
}

#[test]
fn metric_names_are_declared_only_in_the_metrics_module() {
    let declared = declared_metrics();
    assert!(declared.len() > 20, "metrics.rs declares {declared:?}");
    let mut files = engine_and_actors();
    files.retain(|f| !f.ends_with("actors/src/metrics.rs"));
    let mut found = Vec::new();
    let mut calls = 0;
    for file in &files {
        for (line, arg) in metric_macro_names(file) {
            calls += 1;
            // A constant of metrics.rs, by its name or a path ending in it; or the parameter
            // of a function every caller of which passes such a constant.
            let checked =
                if arg.starts_with(|c: char| c.is_ascii_lowercase()) && !arg.contains("::") {
                    forwarded(file, line, &arg)
                } else {
                    vec![(line, arg.clone())]
                };
            for (line, arg) in checked {
                let name = arg.rsplit("::").next().unwrap_or_default();
                if !declared.iter().any(|d| d == name) {
                    found.push(format!(
                        "{}:{line}: metric name `{arg}` is not a constant of actors/src/metrics.rs",
                        relative(file)
                    ));
                }
            }
        }
        // A metric name written out anywhere else (a local constant, a label, a format).
        for (n, line) in code_lines(file) {
            if line.contains("\"engine_") {
                found.push(format!(
                    "{}:{n}: metric-like name in {}",
                    relative(file),
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "metric names outside actors/src/metrics.rs:\n{}",
        found.join("\n")
    );
    assert!(calls > 50, "only {calls} metric macro calls seen");
}

/// Crates and paths that open sockets, files or databases.
const IO_TOKENS: &[&str] = &[
    "std::net",
    "tokio::net",
    "std::fs",
    "tokio::fs",
    "std::env",
    "TcpStream",
    "TcpListener",
    "UdpSocket",
    "UnixStream",
    "UnixListener",
    "ToSocketAddrs",
    "File",
    "OpenOptions",
    "ntex",
    "actix",
    "actix_web",
    "actix_rt",
    "reqwest",
    "hyper",
    "rusqlite",
    "rdkafka",
    "clickhouse",
    "socket2",
    "mio",
];

#[test]
fn actors_has_no_network_file_or_database_code() {
    let found = occurrences(&sources("actors/src"), IO_TOKENS);
    assert!(
        found.is_empty(),
        "network, file or database code in actors:\n{}",
        found.join("\n")
    );
    let manifest =
        std::fs::read_to_string(workspace().join("actors/Cargo.toml")).expect("actors/Cargo.toml");
    let mut in_deps = false;
    let mut deps = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && let Some((name, _)) = line.split_once(['=', '.']) {
            deps.push(name.trim().to_owned());
        }
    }
    assert!(
        deps.iter().any(|d| d == "rhai"),
        "dependencies read: {deps:?}"
    );
    let io: Vec<&String> = deps
        .iter()
        .filter(|d| IO_TOKENS.contains(&d.replace('-', "_").as_str()))
        .collect();
    assert!(io.is_empty(), "actors depends on I/O crates: {io:?}");
    // The scan sees what it looks for: engine has all of it.
    assert!(!occurrences(&sources("engine/src"), IO_TOKENS).is_empty());
}
