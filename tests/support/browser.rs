//! Headless Chromium for the browser tests: where the binary is, and one
//! browser process on a fresh profile, killed on drop (its helper processes
//! exit with it). Install with `apt-get install -y chromium`.

use super::{client, eventually, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

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

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One page, over the DevTools protocol.
pub struct Page {
    ws: Ws,
    next: u64,
}

impl Page {
    /// The page the browser opened (its DevTools port is in the profile).
    pub async fn attach(browser: &Browser) -> Page {
        let file = browser.profile.path().join("DevToolsActivePort");
        let port: u16 = eventually(Duration::from_secs(60), "DevToolsActivePort", || {
            std::fs::read_to_string(&file)
                .ok()?
                .lines()
                .next()?
                .parse()
                .ok()
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let targets: Value = match client()
                .get(format!("http://127.0.0.1:{port}/json/list"))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or(Value::Null),
                Err(_) => Value::Null,
            };
            let page = targets.as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
            });
            if let Some(url) = page {
                break url;
            }
            assert!(Instant::now() < deadline, "no page target: {targets}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .unwrap();
        Page { ws, next: 1 }
    }

    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::Text(msg.into())).await.unwrap();
        let reply = tokio::time::timeout(WAIT, async {
            while let Some(m) = self.ws.next().await {
                if let Ok(Message::Text(t)) = m {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["id"] == id {
                        return v;
                    }
                }
            }
            panic!("DevTools connection closed")
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method}"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// The value of a JavaScript expression in the page; Err with the
    /// exception it threw.
    pub async fn try_eval(&mut self, expr: &str) -> Result<Value, Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        match r.get("exceptionDetails") {
            Some(e) => Err(e.clone()),
            None => Ok(r["result"]["value"].clone()),
        }
    }

    pub async fn eval(&mut self, expr: &str) -> Value {
        self.try_eval(expr)
            .await
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
    }

    /// Wait until `expr` is true in the page (an expression that throws,
    /// as it does while the page is still loading, is not true yet).
    pub async fn until(&mut self, what: &str, expr: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.try_eval(expr).await == Ok(json!(true)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} ({expr}); it shows: {:?}",
                self.try_eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Page {
    /// A PNG of the page, written to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}
