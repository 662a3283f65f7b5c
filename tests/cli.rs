//! The command line (SPEC §1, §2): `check` prints `ok` or every error as
//! FILE:LINE:COL, a bad config never starts a server, a taken port is a clear
//! error, and `--log-format json` logs JSON lines to stderr.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// An env var no test sets.
const UNSET_VAR: &str = "SSEGATE_CLI_TEST_SURELY_UNSET_TOKEN";

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

/// Run `ssegate ARGS` to completion; killed (and the test failed) after `timeout`.
fn run(args: &[&str], timeout: Duration) -> Out {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove(UNSET_VAR)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssegate");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ssegate {args:?} did not exit within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

/// The output lines that are errors located at `file:line:`.
fn errors_at<'a>(output: &'a str, file: &str, line: usize) -> Vec<&'a str> {
    let prefix = format!("{file}:{line}:");
    output.lines().filter(|l| l.starts_with(&prefix)).collect()
}

/// `FILE:LINE:COL: message` lines, parsed.
fn located(output: &str, file: &str) -> Vec<(usize, usize, String)> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(file)?.strip_prefix(':')?;
            let mut parts = rest.splitn(3, ':');
            let line = parts.next()?.parse().ok()?;
            let col = parts.next()?.parse().ok()?;
            let msg = parts.next()?.trim().to_string();
            Some((line, col, msg))
        })
        .collect()
}

fn good_config(port: u16, admin: u16) -> String {
    format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin}\nshutdown_grace: 2s\nupstreams:\n  app: {{ servers: [\"127.0.0.1:3000\"] }}\nroutes:\n  - path: /api/{{*rest}}\n    proxy: app\n  - path: /events/{{room}}\n    sse:\n      channels: [\"room:{{room}}\"]\n"
    )
}

const QUICK: Duration = Duration::from_secs(20);

#[tokio::test]
async fn check_good_config_prints_ok() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "good.yaml",
        &good_config(free_port(), free_port()),
    );
    let out = run(&["check", "-c", path.to_str().unwrap()], QUICK);
    assert_eq!(
        out.code,
        Some(0),
        "stdout {:?} stderr {:?}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.stdout.trim(), "ok", "stderr {:?}", out.stderr);
}

#[tokio::test]
async fn check_unknown_key_is_located_and_suggested() {
    let dir = tempfile::tempdir().unwrap();
    let text = "listen: 127.0.0.1:18080\nshutdown_grace: 5s\nhub:\n  history: { size: 10 }\n  brokr: memory\n";
    let path = write(dir.path(), "typo.yaml", text);
    let file = path.to_str().unwrap();
    let out = run(&["check", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let all = out.all();
    let line = line_of(text, "brokr");
    let hits = errors_at(&all, file, line);
    assert_eq!(
        hits.len(),
        1,
        "one error at {file}:{line}: expected, got:\n{all}"
    );
    let (_, col, msg) = located(hits[0], file).remove(0);
    assert_eq!(col, 3, "column of `brokr`: {}", hits[0]);
    assert!(msg.contains("brokr"), "names the unknown key: {msg}");
    assert!(msg.contains("broker"), "suggests `broker`: {msg}");
    assert!(!all.contains("\nok"), "{all}");
}

#[tokio::test]
async fn check_reports_every_semantic_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen: 127.0.0.1:18081
admin: {{ token_env: {UNSET_VAR} }}
shutdown_grace: soon
upstreams:
  app: {{ servers: [\"127.0.0.1:3000\"] }}
routes:
  - path: /api/{{*rest}}
    proxy: nosuch
  - path: /events/{{room}}
    sse:
      channels: [\"room:{{nope}}\"]
  - path: /same
    proxy: app
  - path: /same
    proxy: app
"
    );
    let path = write(dir.path(), "bad.yaml", &text);
    let file = path.to_str().unwrap();
    let out = run(&["check", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let all = out.all();
    let errors = located(&all, file);

    let expect = |needle_in_config: &str, nth: usize, what: &[&str]| {
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle_in_config))
            .nth(nth)
            .map(|(i, _)| i + 1)
            .unwrap();
        let found = errors
            .iter()
            .any(|(l, _, msg)| *l == line && what.iter().all(|w| msg.contains(w)));
        assert!(
            found,
            "expected an error at {file}:{line}: mentioning {what:?}; output:\n{all}"
        );
    };
    expect("token_env", 0, &[UNSET_VAR]);
    expect("shutdown_grace", 0, &["soon"]);
    expect("proxy: nosuch", 0, &["nosuch"]);
    expect("{nope}", 0, &["{nope}"]);
    expect("- path: /same", 1, &["/same"]);
    assert_eq!(
        errors.len(),
        5,
        "exactly the five errors, each once:\n{all}"
    );
}

#[tokio::test]
async fn check_yaml_syntax_error_is_located() {
    let dir = tempfile::tempdir().unwrap();
    // An unclosed flow sequence on line 4.
    let text = "listen: 127.0.0.1:18082\nupstreams:\n  app:\n    servers: [\"127.0.0.1:3000\"\nroutes:\n  - path: /a\n    proxy: app\n";
    let path = write(dir.path(), "syntax.yaml", text);
    let file = path.to_str().unwrap();
    let out = run(&["check", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let all = out.all();
    let errors = located(&all, file);
    assert!(!errors.is_empty(), "FILE:LINE:COL: expected:\n{all}");
    let (line, col, _) = &errors[0];
    assert!(
        (4..=6).contains(line),
        "line {line} should point near the unclosed `[` (line 4):\n{all}"
    );
    assert!(*col >= 1, "{all}");

    // A tab used for indentation.
    let text = "listen: 127.0.0.1:18082\nhub:\n\tbroker: memory\n";
    let path = write(dir.path(), "tab.yaml", text);
    let file = path.to_str().unwrap();
    let out = run(&["check", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let errors = located(&out.all(), file);
    assert!(
        !errors.is_empty(),
        "FILE:LINE:COL: expected:\n{}",
        out.all()
    );
    assert_eq!(errors[0].0, 3, "{}", out.all());
}

#[tokio::test]
async fn check_missing_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let file = path.to_str().unwrap();
    let out = run(&["check", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    assert!(out.all().contains(file), "{}", out.all());
}

#[tokio::test]
async fn run_with_bad_config_exits_2_without_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let text = format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin}\nshutdown_grace: soon\nroutes:\n  - path: /a\n    proxy: nosuch\n"
    );
    let path = write(dir.path(), "bad.yaml", &text);
    let file = path.to_str().unwrap();
    let out = run(&["run", "-c", file], QUICK);
    assert_eq!(out.code, Some(2), "{}", out.all());
    let all = out.all();
    assert!(
        !errors_at(&all, file, line_of(&text, "shutdown_grace")).is_empty(),
        "{all}"
    );
    assert!(
        !errors_at(&all, file, line_of(&text, "proxy: nosuch")).is_empty(),
        "{all}"
    );
    assert!(!port_open(port), "the public port must stay closed");
    assert!(!port_open(admin), "the admin port must stay closed");
}

#[tokio::test]
async fn run_on_a_taken_port_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    for which in ["listen", "admin"] {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let (port, admin) = if which == "listen" {
            (taken_port, free_port())
        } else {
            (free_port(), taken_port)
        };
        let path = write(
            dir.path(),
            &format!("{which}.yaml"),
            &good_config(port, admin),
        );
        let out = run(&["run", "-c", path.to_str().unwrap()], QUICK);
        assert!(
            matches!(out.code, Some(c) if c != 0),
            "exit {:?}\n{}",
            out.code,
            out.all()
        );
        let all = out.all();
        assert!(
            all.contains(&format!("127.0.0.1:{taken_port}")),
            "the message names the address:\n{all}"
        );
        let other = if which == "listen" { admin } else { port };
        assert!(
            !port_open(other),
            "nothing keeps listening on {other} ({which} taken)"
        );
        drop(taken);
    }
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn log_format_json_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let path = write(dir.path(), "good.yaml", &good_config(port, admin));
    let mut child = Running(
        Command::new(bin())
            .args(["run", "-c", path.to_str().unwrap(), "--log-format", "json"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ssegate"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait for the startup line that names the public address; every line
    // before it (ssegate's and pingora's, bridged from `log`) must be JSON.
    let public = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let v = serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| {
                    panic!(
                        "stderr line is not JSON ({e}): {line}\nbefore:\n{}",
                        seen.join("\n")
                    )
                });
                seen.push(line.clone());
                if line.contains(&public) {
                    break v;
                }
            }
            Err(_) => panic!(
                "no JSON startup line naming {public} within 20s; saw:\n{}",
                seen.join("\n")
            ),
        }
    };
    let message = found["fields"]["message"]
        .as_str()
        .or(found["message"].as_str());
    assert!(
        message.is_some_and(|m| !m.is_empty()),
        "a message field: {found}"
    );
    assert!(found["level"].is_string(), "a level field: {found}");
    assert!(
        found["timestamp"].is_string() || found["time"].is_string(),
        "a timestamp: {found}"
    );
    // The gateway is really running in that mode.
    let ready = Instant::now() + Duration::from_secs(20);
    while !port_open(port) {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "ssegate exited:\n{}",
            seen.join("\n")
        );
        assert!(Instant::now() < ready, "did not listen within 20s");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
}
