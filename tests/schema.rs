//! `ssegate schema`: every config we ship or show validates against the
//! printed JSON Schema and passes `ssegate check`; the schema refuses
//! unknown keys as the loader does.
//!
//! Shipped configs: `conf/*.yaml`, `pkg/deb/ssegate.yaml`, `examples/*/*.yaml`.
//! Shown configs: every ```yaml block in `docs/*.md` and `README.md` whose
//! top-level keys are all config keys (a whole config, or a section of one
//! that stands alone). A block preceded by the line
//! `<!-- schema-only: why -->` (it names files or hosts of a deployment, or
//! refers to a section it does not show) is validated against the schema
//! but not run through `ssegate check`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ssegate")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> Value {
    let out = Command::new(bin()).arg("schema").output().unwrap();
    assert!(out.status.success(), "ssegate schema: {out:?}");
    serde_json::from_slice(&out.stdout).expect("ssegate schema prints JSON")
}

/// A config to check: where it comes from (FILE or FILE:LINE) and its text.
struct Shown {
    label: String,
    text: String,
    /// The file `ssegate check` reads (key files are relative to it).
    file: Option<PathBuf>,
    schema_only: bool,
}

fn shipped() -> Vec<Shown> {
    let mut files: Vec<PathBuf> = vec![root().join("pkg/deb/ssegate.yaml")];
    for dir in ["conf", "examples"] {
        let mut stack = vec![root().join(dir)];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml")) {
                    files.push(p);
                }
            }
        }
    }
    files.sort();
    files
        .into_iter()
        .map(|p| Shown {
            label: p.strip_prefix(root()).unwrap().display().to_string(),
            text: std::fs::read_to_string(&p).unwrap(),
            file: Some(p),
            schema_only: false,
        })
        .collect()
}

/// The ```yaml blocks of the docs that are configs (see the module comment).
fn shown_in_docs(top_keys: &[String]) -> Vec<Shown> {
    let mut mds: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    mds.push(root().join("README.md"));
    mds.sort();
    let mut out = Vec::new();
    for md in mds {
        let name = md.strip_prefix(root()).unwrap().display().to_string();
        let text = std::fs::read_to_string(&md).unwrap();
        let mut block: Option<(usize, bool, String)> = None;
        let mut previous = "";
        for (i, line) in text.lines().enumerate() {
            match &mut block {
                None if matches!(line.trim_end(), "```yaml" | "```yml") => {
                    let schema_only = previous.starts_with("<!-- schema-only:");
                    block = Some((i + 2, schema_only, String::new()));
                }
                None => {}
                Some((start, schema_only, body)) if line.trim_end() == "```" => {
                    if is_config(body, top_keys) {
                        out.push(Shown {
                            label: format!("{name}:{start}"),
                            text: std::mem::take(body),
                            file: None,
                            schema_only: *schema_only,
                        });
                    }
                    block = None;
                }
                Some((_, _, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
            }
            previous = line;
        }
    }
    out
}

fn is_config(block: &str, top_keys: &[String]) -> bool {
    let Ok(Value::Object(map)) = serde_yaml::from_str::<Value>(block) else {
        return false;
    };
    !map.is_empty() && map.keys().all(|k| top_keys.contains(k))
}

/// Every `*_env` key's variable, set to a stand-in: configs name their
/// secrets' variables, and `check` needs them set. The stand-in secret is
/// base64, as Standard Webhooks secrets must be.
fn secrets(v: &Value, env: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match v {
                    Value::String(var) if k.ends_with("_env") => {
                        let value = if k == "url_env" {
                            "redis://127.0.0.1:6379".to_string()
                        } else {
                            "c3RhbmQtaW4tc2VjcmV0LW9mLTMyLWJ5dGVzLW9rIQ==".to_string()
                        };
                        env.push((var.clone(), value));
                    }
                    _ => secrets(v, env),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| secrets(v, env)),
        _ => {}
    }
}

fn check(shown: &Shown, instance: &Value, scratch: &Path) -> Result<(), String> {
    let file = match &shown.file {
        Some(f) => f.clone(),
        None => {
            let f = scratch.join(shown.label.replace(['/', ':'], "_") + ".yaml");
            std::fs::write(&f, &shown.text).unwrap();
            f
        }
    };
    let mut env = Vec::new();
    secrets(instance, &mut env);
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&file)
        .env_remove("SSEGATE_LISTEN")
        .env_remove("SSEGATE_ADMIN_LISTEN")
        .envs(env)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() && stdout.trim() == "ok" {
        Ok(())
    } else {
        Err(format!("ssegate check: {stdout}"))
    }
}

#[test]
fn every_shipped_and_documented_config_validates_and_passes_check() {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let top_keys: Vec<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let all: Vec<Shown> = shipped()
        .into_iter()
        .chain(shown_in_docs(&top_keys))
        .collect();
    assert!(
        all.iter().any(|s| s.label.starts_with("docs/")) && all.len() > 20,
        "found too few configs: {:?}",
        all.iter().map(|s| &s.label).collect::<Vec<_>>()
    );
    let mut failures = Vec::new();
    for shown in &all {
        let instance: Value = match serde_yaml::from_str(&shown.text) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{}: not YAML: {e}", shown.label));
                continue;
            }
        };
        for e in validator.iter_errors(&instance) {
            failures.push(format!(
                "{}: schema: {} at {}",
                shown.label,
                e,
                e.instance_path()
            ));
        }
        if shown.schema_only {
            continue;
        }
        if let Err(e) = check(shown, &instance, scratch.path()) {
            failures.push(format!("{}: {e}", shown.label));
        }
    }
    let schema_only: Vec<&str> = all
        .iter()
        .filter(|s| s.schema_only)
        .map(|s| s.label.as_str())
        .collect();
    println!(
        "{} configs validated, all but {schema_only:?} also checked",
        all.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_schema_refuses_unknown_keys_at_every_level_as_check_does() {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let good = serde_json::json!({
        "listen": "127.0.0.1:8080",
        "upstreams": { "app": { "servers": ["127.0.0.1:3000"], "tls": { "sni": "a" } } },
        "routes": [{ "path": "/events/{r}", "sse": { "channels": ["room:{r}"] } }],
        "webhooks": [{ "path": "/h", "channel": ["a", "b"] }]
    });
    assert!(validator.is_valid(&good), "{good}");
    for (typo, value) in [
        ("/lisen", serde_json::json!("x")),
        ("/upstreams/app/tls/snii", serde_json::json!("a")),
        ("/routes/0/sse/chanels", serde_json::json!([])),
        ("/webhooks/0/verfy", serde_json::json!({})),
    ] {
        let mut bad = good.clone();
        let (parent, key) = typo.rsplit_once('/').unwrap();
        bad.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap()
            .insert(key.to_string(), value);
        assert!(!validator.is_valid(&bad), "the schema accepts {typo}");
    }
    let wrong_type = serde_json::json!({ "upstreams": { "app": { "servers": "127.0.0.1:3000" } } });
    assert!(!validator.is_valid(&wrong_type));
    let scratch = tempfile::tempdir().unwrap();
    let typo = scratch.path().join("typo.yaml");
    std::fs::write(&typo, "listen: 127.0.0.1:8080\nlisen: x\n").unwrap();
    let out = Command::new(bin())
        .args(["check", "-c"])
        .arg(&typo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && stdout.contains("lisen"),
        "check accepts what the schema refuses: {stdout}"
    );
}
