//! Managed Redis speaks TLS (`rediss://`): two gateways on a TLS-only
//! redis-server on loopback, trusting the test CA through `hub.redis.ca`,
//! act as one; a gateway that trusts only the system's roots does not
//! connect (and says so without the URL's password).

mod support;

use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::faults::tool_available;
use support::tls::TestCa;
use support::*;

/// A redis-server that accepts only TLS, with a certificate of `ca`.
struct TlsRedis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start(ca: &TestCa) -> TlsRedis {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca.issue(dir.path(), "redis");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca.pem).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .args(["--tls-auth-clients", "no", "--requirepass", "r3dis-pass"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server");
        let deadline = Instant::now() + WAIT;
        while !port_open(port) {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start: {}",
                std::fs::read_to_string(dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            child,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(ca_line: &str) -> String {
    format!(
        r#"
hub:
  broker: redis
  redis: {{ url_env: REDIS_URL, prefix: tlstest{ca_line} }}
routes:
  - path: /events/{{ch}}
    sse: {{ channels: ["{{ch}}"] }}
"#
    )
}

#[tokio::test]
async fn gateways_share_a_tls_redis_that_they_trust() {
    if !tool_available("redis-server") {
        return;
    }
    let ca = TestCa::new("redis");
    let redis = TlsRedis::start(&ca);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("redis-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let url = format!("rediss://:r3dis-pass@127.0.0.1:{}", redis.port);
    let env = [("REDIS_URL", url.as_str())];
    let with_ca = config(&format!(", ca: \"{}\"", ca_file.display()));
    let a = Gateway::start_with_env(&with_ca, &env);
    let b = Gateway::start_with_env(&with_ca, &env);
    for gw in [&a, &b] {
        faults::ready_within(gw, WAIT).await;
    }
    // Subscribe on one, publish on the other, resume on the first.
    let mut sse = Sse::connect(&a.url("/events/secure")).await;
    assert_eq!(sse.status, 200);
    b.publish_ok("secure", json!("over tls")).await;
    let first = sse.next().await;
    assert_eq!(first.data, "over tls");
    b.publish_ok("secure", json!("missed")).await;
    drop(sse);
    let mut again =
        Sse::connect_with(&a.url("/events/secure"), &[("last-event-id", &first.id)]).await;
    assert_eq!(again.next().await.data, "missed");

    // The system's roots do not hold the test CA: never ready, and the
    // log names the problem without the password.
    let system = Gateway::start_with_env(&config(""), &env);
    let url = system.admin("/readyz");
    let reason = faults::within(WAIT, "/readyz to report the certificate", || async {
        let r = client().get(&url).send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap_or_default();
        assert_ne!(status, 200, "connected without trusting the server's CA");
        body.to_lowercase().contains("certificate").then_some(body)
    })
    .await;
    assert!(!reason.contains("r3dis-pass"), "{reason}");
    for gw in [&a, &b, &system] {
        assert!(!gw.log().contains("r3dis-pass"), "{}", gw.log());
    }
}
