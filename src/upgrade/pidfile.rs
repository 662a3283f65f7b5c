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
