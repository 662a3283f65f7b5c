//! `<upgrade_socket>.pid`: which process `run --upgrade` takes over from.
//! Every gateway writes its pid there once it runs, so that one command
//! upgrades (the new process sends the SIGQUIT itself). A stale file is
//! harmless: a pid that is not a running ssegate is never signalled.

use rustix::process::{kill_process, Pid, Signal};
use std::io;
use std::path::{Path, PathBuf};

fn path(upgrade_socket: &Path) -> PathBuf {
    let mut p = upgrade_socket.as_os_str().to_owned();
    p.push(".pid");
    PathBuf::from(p)
}

/// Write this process's pid, atomically (temp file + rename).
pub(crate) fn write(upgrade_socket: &Path) -> io::Result<()> {
    let target = path(upgrade_socket);
    let mut tmp = target.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, &target)
}

/// Remove the pid file if it still names this process (a successor may
/// have written its own already).
pub(crate) fn remove(upgrade_socket: &Path) {
    let target = path(upgrade_socket);
    if read(&target) == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(target);
    }
}

fn read(file: &Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// SIGQUIT to the gateway named in the pid file, if it is one; its pid.
pub(crate) fn signal_running(upgrade_socket: &Path) -> io::Result<Option<i32>> {
    let Some(raw) = read(&path(upgrade_socket)) else {
        return Ok(None);
    };
    if raw == std::process::id() as i32 {
        return Ok(None);
    }
    let Some(pid) = Pid::from_raw(raw) else {
        return Ok(None);
    };
    // Only a live process whose name is ours: pids are reused.
    let comm = std::fs::read_to_string(format!("/proc/{raw}/comm")).unwrap_or_default();
    if !comm.trim_end().starts_with("ssegate") {
        return Ok(None);
    }
    kill_process(pid, Signal::QUIT)?;
    Ok(Some(raw))
}

/// SIGQUIT to the running gateway once pingora in this process listens on
/// `upgrade_socket` for the listeners: the old process tries to connect at
/// once and otherwise retries only every second. pingora unlinks and binds
/// the path during bootstrap, so a socket with a new inode means it is
/// there (it listens right after binding).
pub(crate) fn signal_when_listening(upgrade_socket: PathBuf) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let inode = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .filter(|m| m.file_type().is_socket())
            .map(|m| (m.dev(), m.ino()))
    };
    let before = inode(&upgrade_socket);
    let spawned = std::thread::Builder::new()
        .name("upgrade-signal".into())
        .spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                let now = inode(&upgrade_socket);
                if now.is_some() && now != before {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            log_signal(&upgrade_socket, signal_running(&upgrade_socket));
        });
    if let Err(e) = spawned {
        tracing::warn!("upgrade: could not signal the running gateway ({e}); send it SIGQUIT");
    }
}

fn log_signal(upgrade_socket: &Path, sent: io::Result<Option<i32>>) {
    match sent {
        Ok(Some(pid)) => tracing::info!(pid, "upgrade: sent SIGQUIT to the running gateway"),
        Ok(None) => tracing::info!(
            socket = %upgrade_socket.display(),
            "upgrade: waiting for the running gateway's sockets (send it SIGQUIT)"
        ),
        Err(e) => {
            tracing::warn!("upgrade: could not signal the running gateway ({e}); send it SIGQUIT")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_names_this_process_and_is_removed_only_by_it() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("u.sock");
        write(&sock).unwrap();
        assert_eq!(read(&path(&sock)), Some(std::process::id() as i32));
        // Our own pid is never signalled.
        assert_eq!(signal_running(&sock).unwrap(), None);
        std::fs::write(path(&sock), "1\n").unwrap();
        remove(&sock);
        assert!(path(&sock).exists(), "a successor's pid file stays");
        write(&sock).unwrap();
        remove(&sock);
        assert!(!path(&sock).exists());
    }
}
