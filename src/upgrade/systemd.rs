//! systemd's notify protocol (`Type=notify`, `NotifyAccess=all`): READY=1
//! once the listeners run, and, from a process that takes over in a live
//! upgrade, MAINPID=<its pid> before the old process is told to go — or
//! systemd would see the main process exit and stop the whole unit. One
//! datagram on `$NOTIFY_SOCKET`; nothing when it is unset.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Send `state` (lines like `READY=1`); false when not under systemd.
pub(crate) fn notify(state: &str) -> io::Result<bool> {
    notify_to(std::env::var_os("NOTIFY_SOCKET"), state)
}

fn notify_to(path: Option<std::ffi::OsString>, state: &str) -> io::Result<bool> {
    let Some(path) = path else {
        return Ok(false);
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (systemd's default in containers and user units).
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_sends_one_datagram_to_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let sent = notify_to(Some(path.into_os_string()), "READY=1\nMAINPID=42");
        assert!(sent.unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=42");
        assert!(
            !notify_to(None, "READY=1").unwrap(),
            "no socket, nothing sent"
        );
    }
}

/// Tells systemd the gateway is ready: started after the listeners (a
/// service dependency), so after a live upgrade's handoff too.
#[derive(Debug)]
pub(crate) struct Ready;

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for Ready {
    async fn start(&self, _shutdown: pingora_core::server::ShutdownWatch) {
        if let Err(e) = notify("READY=1") {
            tracing::warn!("systemd notify (READY=1): {e}");
        }
    }
}
