//! Console and VMM logs rotated by size (`--log-max-mib`): a log that
//! grew past the limit is copied to `NAME.log.1` (replacing the previous
//! one) and truncated in place. Copy-then-truncate because the writer is
//! another process holding the file open: every writer (the VMM's serial
//! console, a VMM's or VIOS's stderr, the file the manager hands a
//! `--run-as` VMM) opens it with `O_APPEND`, so its next write lands at
//! the new end. Output written between the copy and the truncation is
//! lost (a few bytes at most, as with logrotate's `copytruncate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often the logs are looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// The previous generation of `log`: `NAME.log` -> `NAME.log.1`.
pub fn rotated(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Rotates `log` if it is larger than `max` bytes; whether it did.
pub fn rotate_if_over(log: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(log) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let old = rotated(log);
    let mut tmp = old.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(log, &tmp)?;
    std::fs::rename(&tmp, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(log)?
        .set_len(0)?;
    Ok(true)
}

/// Every [`CHECK_EVERY`], rotates the `*.log` files of `dir` larger than
/// `max` bytes, on a thread of its own, for the manager's lifetime.
pub fn start(dir: PathBuf, max: u64) {
    crate::process::spawn_thread("logrotate", move || loop {
        std::thread::sleep(CHECK_EVERY);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "log") {
                continue;
            }
            match rotate_if_over(&path, max) {
                Ok(true) => tracing::info!(log = %path.display(), max, "log rotated"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(log = %path.display(), error = %e, "cannot rotate the log")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    #[test]
    fn a_log_over_the_limit_is_kept_once_and_its_writer_goes_on_at_the_start() {
        let dir = std::env::temp_dir().join(format!("parvm-logrotate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("p.log");
        // The writer: another open file description, appending.
        let mut writer = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        writer.write_all(&[b'a'; 100]).unwrap();
        assert!(!rotate_if_over(&log, 100).unwrap());
        writer.write_all(b"b").unwrap();
        assert!(rotate_if_over(&log, 100).unwrap());
        assert_eq!(std::fs::metadata(&log).unwrap().len(), 0);
        assert_eq!(std::fs::read(rotated(&log)).unwrap().len(), 101);
        writer.write_all(b"after").unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"after");
        assert!(!rotate_if_over(&dir.join("missing.log"), 1).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
