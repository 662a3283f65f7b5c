//! Build script: the git revision for `ssegate --version` (`SSEGATE_GIT_REV`).
//!
//! `git rev-parse --short HEAD` when built inside a git checkout, "unknown"
//! outside one (a source tarball, `cargo package`). The script reruns when
//! HEAD moves (a commit, a checkout), so the binary never reports a stale
//! revision; it does not track uncommitted edits.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Watch `path` only if it exists: cargo reruns a build script on every
/// build when a watched file is missing.
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rev = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SSEGATE_GIT_REV={rev}");

    // HEAD lives in the worktree's git dir; the branch it points to (loose or
    // packed) in the common dir, which differs in a `git worktree`.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        watch(&git_dir.join("HEAD"));
        let common = git(&["rev-parse", "--path-format=absolute", "--git-common-dir"])
            .map(PathBuf::from)
            .unwrap_or_else(|| git_dir.clone());
        if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch(&git_dir.join(&head_ref));
            watch(&common.join(&head_ref));
        }
        watch(&common.join("packed-refs"));
    }
}
