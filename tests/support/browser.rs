//! Headless Chromium for the browser tests: where the binary is, and one
//! browser process on a fresh profile, killed on drop (its helper processes
//! exit with it). Install with `apt-get install -y chromium`.

use std::process::{Child, Command, Stdio};

/// `SSEGATE_CHROMIUM`, else the first of the usual names on the PATH.
pub fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("SSEGATE_CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
}

/// The browser to test with; None (after saying so) when none is installed
/// on a developer's machine. Under `scripts/test` (`SSEGATE_REQUIRE_CHROMIUM`)
/// or in CI a missing browser fails the test.
pub fn chromium_or_skip() -> Option<String> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var_os("SSEGATE_REQUIRE_CHROMIUM").is_none(),
            "chromium is missing and SSEGATE_REQUIRE_CHROMIUM is set (apt-get install -y chromium)"
        );
        super::missing_tool("chromium", "apt-get install -y chromium");
    }
    found
}

/// The browser, killed on drop; its helper processes (zygote, renderers,
/// crashpad) exit by themselves once the browser process is gone.
pub struct Browser {
    child: Child,
    pub profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open `url` in a headless browser, with `extra` flags.
pub fn launch(bin: &str, url: &str, extra: &[&str]) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Browser { child, profile }
}
