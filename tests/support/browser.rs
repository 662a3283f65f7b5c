//! A headless Chromium for browser tests: found on the PATH (or
//! `SSEGATE_CHROMIUM`), started on a page, killed when dropped.

use std::process::{Child, Command, Stdio};

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

/// The browser, killed on drop; its helper processes (zygote, renderers,
/// crashpad) exit by themselves once the browser process is gone.
pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Headless Chromium with a fresh profile, quiet; the caller adds flags and the URL.
fn headless(bin: &str, profile: &tempfile::TempDir) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args([
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
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

pub fn launch(bin: &str, url: &str) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let child = headless(bin, &profile).arg(url).spawn().unwrap();
    Browser {
        child,
        _profile: profile,
    }
}

/// A headless Chromium driven over the DevTools protocol: evaluate
/// JavaScript in the page (clicks, reading state) and take screenshots.
pub struct DevTools {
    _browser: Browser,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

/// Chromium on `url` with a DevTools port, connected to the page's target.
pub async fn devtools(bin: &str, url: &str, width: u32, height: u32) -> DevTools {
    use std::time::{Duration, Instant};
    let profile = tempfile::tempdir().unwrap();
    let child = headless(bin, &profile)
        .args([
            "--hide-scrollbars",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(url)
        .spawn()
        .unwrap();
    let browser = Browser {
        child,
        _profile: profile,
    };
    // Chromium writes the port it took into the profile once it listens.
    let active = browser._profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(20);
    let port: u16 = loop {
        if let Some(p) = std::fs::read_to_string(&active)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium wrote no DevToolsActivePort"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let ws_url = loop {
        let targets: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets.as_array().and_then(|ts| {
            ts.iter()
                .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
        });
        if let Some(ws) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
            break ws.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no page target for {url}: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    DevTools {
        _browser: browser,
        ws,
        next_id: 0,
    }
}

impl DevTools {
    /// One DevTools command; its `result`. Events in between are skipped.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let answer = async {
            loop {
                let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                    panic!("DevTools connection closed during {method}");
                };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), answer)
            .await
            .unwrap_or_else(|_| panic!("DevTools {method} unanswered in 10s"))
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let params = serde_json::json!({
            "expression": expression, "returnByValue": true, "awaitPromise": true
        });
        let r = self.call("Runtime.evaluate", params).await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{expression}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy (at most `timeout`), naming `what`.
    pub async fn wait_for(&mut self, timeout: std::time::Duration, what: &str, expression: &str) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let v = self.eval(&format!("!!({expression})")).await;
            if v == serde_json::Value::Bool(true) {
                return;
            }
            let state = self.eval("JSON.stringify(window.demo ?? null)").await;
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not within {timeout:?} ({expression}); page state: {state}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page, written to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path) {
        use base64::Engine;
        let params = serde_json::json!({ "format": "png", "captureBeyondViewport": true });
        let r = self.call("Page.captureScreenshot", params).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }
}
