//! One writer per snapshot file (docs/persistence.md "Operations"): an advisory lock (`flock`) on
//! `<path>.lock`, held by the process that writes the snapshot for as long as its engine runs.
//! Several processes given the same `persist` path (the workers of `node:cluster` or of pm2 on
//! one host, which hold the same sessions) would otherwise write the same temporary file at once.
//! The kernel releases the lock when its holder exits, however it exits.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct FileLock {
    _file: File,
}

/// `<path>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

impl FileLock {
    /// The lock of the snapshot at `path`: `None` while another process (or another engine of
    /// this one) holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(lock_path(path))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(FileLock { _file: file }));
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            e => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_released_on_drop() {
        let path = std::env::temp_dir().join(format!("esm-lock-{}.snap", std::process::id()));
        let first = FileLock::try_acquire(&path).unwrap();
        assert!(first.is_some());
        assert!(FileLock::try_acquire(&path).unwrap().is_none(), "a second holder while the first holds it");
        drop(first);
        assert!(FileLock::try_acquire(&path).unwrap().is_some(), "free again once dropped");
        assert!(lock_path(&path).to_string_lossy().ends_with(".snap.lock"));
        let _ = std::fs::remove_file(lock_path(&path));
    }
}
