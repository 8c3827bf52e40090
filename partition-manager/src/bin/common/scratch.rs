//! What the benchmark binaries (`bench-manager`, `bench-grants`) share
//! (included by each with `#[path]`; not part of the library): a
//! real `partition-manager` daemon started in a scratch directory, driven
//! through its socket and torn down with its partitions.

use anyhow::{bail, Context};
use partition_manager::client::Client;
use partition_manager::protocol::{Request, Response};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The directory of the running benchmark binary, where cargo also put
/// `partition-manager` and `vmm`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    Ok(std::env::current_exe()?
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

/// A `partition-manager` daemon of its own in a scratch directory (its
/// socket `pm.sock`, its log `manager.log`, its state directory `state`).
/// Dropping it kills its active partitions and the daemon, then removes the
/// directory (unless kept, see [`ScratchManager::keep_if_asked`]).
pub struct ScratchManager {
    pub child: Child,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// The program to name when `PARVM_BENCH_KEEP` keeps `dir`.
    keep_as: Option<&'static str>,
}

impl ScratchManager {
    /// Starts `bin`/partition-manager with `bin`/vmm as its VMM in `dir`
    /// (emptied first), `args` added to its command line and `PARVM_LOG` set
    /// to `log`; returns once its socket answers (at most 10 s).
    pub fn start(bin: &Path, dir: PathBuf, args: &[&str], log: &str) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("pm.sock");
        let log_file = std::fs::File::create(dir.join("manager.log"))?;
        let child = Command::new(bin.join("partition-manager"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--vmm")
            .arg(bin.join("vmm"))
            .args(args)
            .env("PARVM_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("cannot start partition-manager")?;
        let m = ScratchManager {
            child,
            dir,
            socket,
            keep_as: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(&m.socket).is_err() {
            if Instant::now() > deadline {
                bail!("the manager did not come up");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(m)
    }

    /// On drop, keeps the directory when `PARVM_BENCH_KEEP` is set, saying
    /// so on stderr as `program`.
    pub fn keep_if_asked(mut self, program: &'static str) -> Self {
        self.keep_as = Some(program);
        self
    }

    /// Makes one request on a connection of its own.
    pub fn call(&self, r: &Request) -> anyhow::Result<Response> {
        Ok(Client::connect(&self.socket)?.call(r)?.0)
    }
}

impl Drop for ScratchManager {
    fn drop(&mut self) {
        if let Ok(c) = Client::connect(&self.socket) {
            if let Ok((Response::List { partitions }, _)) = c.call(&Request::List) {
                for p in partitions.iter().filter(|p| p.state.is_active()) {
                    let _ = self.call(&Request::Kill {
                        name: p.name.clone(),
                    });
                }
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        match self.keep_as {
            Some(program) if std::env::var_os("PARVM_BENCH_KEEP").is_some() => {
                eprintln!("{program}: kept {}", self.dir.display());
            }
            _ => {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }
    }
}
