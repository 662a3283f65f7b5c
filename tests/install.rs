//! Install and first run (issue 16), through the real binary: `--version`
//! names the git revision, the environment configures a service or container
//! (`SSEGATE_CONFIG`, `SSEGATE_LOG_FORMAT`, `SSEGATE_LISTEN`,
//! `SSEGATE_ADMIN_LISTEN`), a bad value exits 2 before anything listens, the
//! built-in default config serves when `conf/ssegate.yaml` is absent, and
//! the man pages and docs list what `--help` lists.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const QUICK: Duration = Duration::from_secs(20);

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Run `ssegate ARGS` with `env` in `dir` to completion; the test fails (and
/// the process is killed) if it has not exited within `QUICK`.
async fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SSEGATE_CONFIG")
        .env_remove("SSEGATE_LOG_FORMAT")
        .env_remove("SSEGATE_LISTEN")
        .env_remove("SSEGATE_ADMIN_LISTEN")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(QUICK, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("ssegate {args:?} did not exit within {QUICK:?}"))
        .expect("spawn ssegate");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Out {
    run_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, env).await
}

/// A config whose own addresses are on ports nothing listens on.
fn config_file(dir: &Path) -> (PathBuf, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let path = dir.join("ssegate.yaml");
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin}\nshutdown_grace: 1s\nroutes:\n  - path: /events/{{room}}\n    sse:\n      channels: [\"room:{{room}}\"]\n"
        ),
    )
    .unwrap();
    (path, port, admin)
}

/// Start `ssegate run` with `args` in `cwd` and the listen addresses from the
/// environment; wait until both overridden ports listen.
fn start_overridden(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let log_path = dir.path().join("ssegate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("SSEGATE_CONFIG")
        .env_remove("SSEGATE_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .env("SSEGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SSEGATE_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut gw = Gateway {
        port,
        admin_port: admin,
        config_path: dir.path().join("unused.yaml"),
        dir,
        child: Some(cmd.spawn().unwrap()),
        log_path,
    };
    let deadline = Instant::now() + QUICK;
    while !(port_open(port) && port_open(admin)) {
        if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("ssegate exited early ({status}); log:\n{}", gw.log());
        }
        assert!(
            Instant::now() < deadline,
            "ssegate did not listen on the overridden ports within {QUICK:?}; log:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gw
}

/// Subscribe on the public listener, publish on the admin one, receive it.
async fn round_trip(gw: &Gateway, room: &str) {
    let mut sse = Sse::connect(&gw.url(&format!("/events/{room}"))).await;
    assert_eq!(sse.status, 200);
    gw.publish_ok(&format!("room:{room}"), json!(format!("hello {room}")))
        .await;
    let ev = sse.next().await;
    assert_eq!(ev.data, format!("hello {room}"));
}

/// What `git rev-parse --short HEAD` says in the source tree, or "unknown"
/// outside git (as build.rs does).
fn expected_rev() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[tokio::test]
async fn version_prints_the_crate_version_and_git_revision() {
    let out = run(&["--version"], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let want = format!(
        "ssegate {} (git {})",
        env!("CARGO_PKG_VERSION"),
        expected_rev()
    );
    assert_eq!(out.stdout.trim(), want);
}

#[tokio::test]
async fn ssegate_config_names_the_file_check_reads() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _, _) = config_file(dir.path());
    let out = run(&["check"], &[("SSEGATE_CONFIG", good.to_str().unwrap())]).await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), "ok"),
        "{}",
        out.stderr
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "listen: 127.0.0.1:1\nlisten_typo: 1\n").unwrap();
    let out = run(&["check"], &[("SSEGATE_CONFIG", bad.to_str().unwrap())]).await;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}:2:", bad.display()))),
        "errors name the file from SSEGATE_CONFIG at its line: {}",
        out.stdout
    );
    // -c on the command line wins over the environment.
    let out = run(
        &["check", "-c", good.to_str().unwrap()],
        &[("SSEGATE_CONFIG", bad.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
}

#[tokio::test]
async fn ssegate_log_format_json_logs_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (good, _, _) = config_file(dir.path());
    let out = run(
        &["check", "-c", good.to_str().unwrap()],
        &[
            ("SSEGATE_LOG_FORMAT", "json"),
            ("SSEGATE_LISTEN", "127.0.0.1:1"),
        ],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("SSEGATE_LISTEN"))
        .unwrap_or_else(|| panic!("no log line about SSEGATE_LISTEN: {}", out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    assert_eq!(v["level"], "INFO", "{v}");

    let out = run(
        &["check", "-c", good.to_str().unwrap()],
        &[("SSEGATE_LOG_FORMAT", "xml")],
    )
    .await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("xml"), "{}", out.stderr);
}

#[tokio::test]
async fn ssegate_listen_and_admin_listen_override_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (path, file_port, file_admin) = config_file(dir.path());
    let runtime = tempfile::tempdir().unwrap();
    let gw = start_overridden(
        dir.path(),
        &["run", "-c", path.to_str().unwrap()],
        &[("RUNTIME_DIRECTORY", runtime.path().to_str().unwrap())],
    );
    assert!(
        !port_open(file_port) && !port_open(file_admin),
        "the config file's own addresses are not used"
    );
    round_trip(&gw, "env").await;
    // The default upgrade socket follows the moved port, so two instances
    // of one file never share it.
    let pid_file = runtime
        .path()
        .join(format!("ssegate-{}.upgrade.sock.pid", gw.port));
    assert!(
        pid_file.exists(),
        "no {} (runtime dir holds {:?})",
        pid_file.display(),
        std::fs::read_dir(runtime.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>()
    );
    let log = gw.log();
    assert!(
        log.contains(&format!(
            "listen address 127.0.0.1:{} from SSEGATE_LISTEN",
            gw.port
        )),
        "{log}"
    );
}

#[tokio::test]
async fn run_without_a_config_file_serves_the_built_in_default() {
    // A directory without conf/ssegate.yaml: the README's first command then
    // runs on the config built into the binary (ports from the environment,
    // so the test does not need 8080/9090 free).
    let empty = tempfile::tempdir().unwrap();
    let gw = start_overridden(empty.path(), &["run"], &[]);
    round_trip(&gw, "lobby").await;
    assert!(
        gw.log().contains("using the built-in default config"),
        "{}",
        gw.log()
    );
}

#[tokio::test]
async fn a_bad_listen_address_in_the_environment_exits_2_before_listening() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port, admin) = config_file(dir.path());
    let path = path.to_str().unwrap();
    let taken = format!("127.0.0.1:{admin}");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[("SSEGATE_LISTEN", "not-an-address")], "SSEGATE_LISTEN"),
        (
            &[("SSEGATE_ADMIN_LISTEN", "127.0.0.1")],
            "SSEGATE_ADMIN_LISTEN",
        ),
        (&[("SSEGATE_LISTEN", &taken)], "must not share"),
    ];
    for (env, says) in cases {
        for cmd in ["run", "check"] {
            let out = run_in(dir.path(), &[cmd, "-c", path], env).await;
            let all = format!("{}{}", out.stdout, out.stderr);
            assert_eq!(out.code, Some(2), "{cmd} with {env:?}: {all}");
            assert!(
                all.contains(says),
                "{cmd} with {env:?} says {says:?}: {all}"
            );
        }
    }
    assert!(!port_open(port) && !port_open(admin), "nothing listens");
}

/// The commands `ssegate --help` lists.
async fn help_commands() -> Vec<String> {
    let out = run(&["--help"], &[]).await;
    assert_eq!(out.code, Some(0));
    out.stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

/// The variables the `Environment:` part of `ssegate --help` lists.
async fn help_environment() -> Vec<String> {
    let out = run(&["--help"], &[]).await;
    out.stdout
        .lines()
        .skip_while(|l| !l.starts_with("Environment:"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn man_pages_cover_every_command_and_variable_of_help() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", dir.path().to_str().unwrap()], &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    let commands = help_commands().await;
    assert!(commands.contains(&"run".to_string()), "{commands:?}");
    let mut want: Vec<String> = commands.iter().map(|c| format!("ssegate-{c}.1")).collect();
    want.push("ssegate.1".into());
    want.sort();
    assert_eq!(pages, want, "one page per command of --help");

    let vars = help_environment().await;
    assert!(vars.contains(&"SSEGATE_LISTEN".to_string()), "{vars:?}");
    let top = std::fs::read_to_string(dir.path().join("ssegate.1")).unwrap();
    assert!(
        top.starts_with(".ie"),
        "roff: {}",
        &top[..top.len().min(200)]
    );
    for var in &vars {
        assert!(top.contains(var), "ssegate.1 lists {var}");
    }
    let run_page = std::fs::read_to_string(dir.path().join("ssegate-run.1")).unwrap();
    assert!(run_page.contains("SSEGATE_CONFIG") && run_page.contains("\\-\\-config"));
}

#[tokio::test]
async fn docs_list_every_environment_variable_of_help() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_md = std::fs::read_to_string(root.join("docs/config.md")).unwrap();
    let install_md = std::fs::read_to_string(root.join("docs/install.md")).unwrap();
    for var in help_environment().await {
        assert!(config_md.contains(&var), "docs/config.md documents {var}");
        if var != "RUST_LOG" {
            assert!(install_md.contains(&var), "docs/install.md documents {var}");
        }
    }
}

#[tokio::test]
async fn the_packaged_config_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pkg/deb/ssegate.yaml");
    let out = run(&["check", "-c", path.to_str().unwrap()], &[]).await;
    assert_eq!(
        (out.code, out.stdout.trim()),
        (Some(0), "ok"),
        "{}",
        out.stderr
    );
}
