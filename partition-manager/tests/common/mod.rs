//! The scratch environment of the manager's integration tests: a real
//! `partition-manager` in a scratch directory, `parctl` to talk to it, and
//! cleanup of every VMM it started.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use parvm_tests::guests::guest_path;
use parvm_tests::{run, scratch_dir, Finished};
use serde_json::Value;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PARCTL: &str = env!("CARGO_BIN_EXE_parctl");
pub const MANAGER: &str = env!("CARGO_BIN_EXE_partition-manager");

/// The vmm binary: `$PARVM_VMM`, else `vmm` in the target directory of this
/// test executable (target/debug/deps/.. -> target/debug/vmm), which
/// `cargo test --workspace` builds because the vmm crate has integration
/// tests.
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PARVM_VMM") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().unwrap().parent().unwrap().join("vmm");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p vmm) or set PARVM_VMM",
        p.display()
    );
    p
}

/// A manager in a scratch directory and the parctl to talk to it.
pub struct Env {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub vmm: PathBuf,
    pub extra: Vec<String>,
    pub manager: Option<Child>,
}

impl Env {
    pub fn new(test: &str) -> Env {
        Self::with(test, vmm_binary(), &[])
    }

    pub fn with(test: &str, vmm: PathBuf, extra: &[&str]) -> Env {
        let dir = scratch_dir(&format!("pm-{test}"));
        let mut env = Env {
            socket: dir.join("pm.sock"),
            state: dir.join("state"),
            dir,
            vmm,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            manager: None,
        };
        env.start_manager();
        env
    }

    pub fn start_manager(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("manager.log"))
            .unwrap();
        let child = Command::new(MANAGER)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--vmm")
            .arg(&self.vmm)
            .args(&self.extra)
            .env("PARVM_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.manager = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "manager did not listen:\n{}",
                self.manager_log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill_manager(&mut self) {
        if let Some(mut m) = self.manager.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    pub fn manager_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("manager.log")).unwrap_or_default()
    }

    pub fn parctl(&self, args: &[&str]) -> Finished {
        let mut cmd = Command::new(PARCTL);
        cmd.args(args).env("PARVM_SOCKET", &self.socket);
        run(cmd, Duration::from_secs(30))
    }

    /// Runs parctl, expecting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let f = self.parctl(args);
        assert_eq!(
            f.code(),
            Some(0),
            "parctl {args:?} failed: {}{}\nmanager log:\n{}",
            f.stdout,
            f.stderr,
            self.manager_log()
        );
        f.stdout
    }

    /// Runs parctl, expecting a one-line error; returns it.
    /// `parctl args` fails (any exit status but 0 and 2, the usage
    /// error's) with one line of error; returns that line.
    /// As [`Self::fails`], with exit status `code` (docs/manager.md, "Exit
    /// status").
    pub fn fails_with(&self, args: &[&str], code: i32) -> String {
        let f = self.parctl(args);
        assert_eq!(
            f.code(),
            Some(code),
            "parctl {args:?}: {}{}",
            f.stdout,
            f.stderr
        );
        self.fails(args)
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let f = self.parctl(args);
        assert!(
            matches!(f.code(), Some(c) if c != 0 && c != 2),
            "parctl {args:?} should fail: {:?} {}{}",
            f.code(),
            f.stdout,
            f.stderr
        );
        let line = f.stderr.trim_end().to_string();
        assert!(!line.contains('\n'), "error is not one line: {line}");
        assert!(line.starts_with("parctl: error: "), "{line}");
        line
    }

    pub fn status(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["status", name, "--json"])).unwrap()
    }

    pub fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(name);
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} not reached in {timeout:?}: {s}\nmanager log:\n{}",
                self.manager_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        self.wait_for(name, timeout, state, |s| s["state"] == state)
    }

    /// A definition file for a spinning tiny guest.
    pub fn hang_definition(&self, name: &str, restart: &str) -> String {
        let p = self.dir.join(format!("{name}.json"));
        let def = serde_json::json!({
            "name": name,
            "vcpus": 1,
            "memory_mib": 16,
            "kernel": guest_path("tiny.elf"),
            "cmdline": "console=ttyS0 parvm.test=hang",
            "restart": restart,
        });
        std::fs::write(&p, def.to_string()).unwrap();
        p.display().to_string()
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.state.join("logs").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    pub fn wait_log(&self, name: &str, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_of(name).contains(text) {
            assert!(
                Instant::now() < deadline,
                "{name} never printed {text:?}: {}",
                self.log_of(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The `vios` binary next to `vmm` (where the manager looks for it); built
/// if this test run did not build it.
pub fn ensure_vios(vmm: &Path) -> PathBuf {
    let vios = vmm.with_file_name("vios");
    if !vios.exists() {
        let release = vmm
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "vios", "--bin", "vios"]);
        if release {
            cmd.arg("--release");
        }
        assert!(
            cmd.status().unwrap().success(),
            "cargo build -p vios failed"
        );
    }
    assert!(vios.exists(), "{} missing", vios.display());
    vios
}

pub fn pid_of(s: &Value) -> u32 {
    s["pid"].as_u64().expect("a pid") as u32
}

pub fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) } == 0;
    let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true);
    exists && !zombie
}

pub fn kill9(pid: u32) {
    // SAFETY: SIGKILL to a VMM this test started through the manager.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
}

impl Drop for Env {
    fn drop(&mut self) {
        self.kill_manager();
        // Kill every VMM started from this scratch directory.
        let marker = self.dir.display().to_string();
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&marker) {
                    // SAFETY: a VMM of this test.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The virtualenv scripts/install-deps.sh makes (python3 with the
/// system's prometheus_client, and schemathesis).
pub fn pyenv() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin");
    assert!(
        p.join("python3").exists(),
        "{} missing: run scripts/install-deps.sh",
        p.display()
    );
    p
}

/// `/metrics` of the manager (with curl on its API socket), and the same
/// parsed by Prometheus's own OpenMetrics parser:
/// `{FAMILY: {"type", "samples": [[NAME, LABELS, VALUE], ...]}}`.
pub fn scrape(env: &Env) -> (String, Value) {
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(env.dir.join("api.sock"))
        .arg("http://localhost/metrics")
        .output()
        .expect("curl (scripts/install-deps.sh installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    let mut py = Command::new(pyenv().join("python3"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut py.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the OpenMetrics parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    (text, serde_json::from_slice(&parsed.stdout).unwrap())
}

/// The value of the sample of `family` whose labels include `labels`.
pub fn sample(families: &Value, family: &str, labels: Value) -> Option<f64> {
    families[family]["samples"]
        .as_array()?
        .iter()
        .find(|s| {
            labels
                .as_object()
                .unwrap()
                .iter()
                .all(|(k, v)| &s[1][k] == v)
        })
        .and_then(|s| s[2].as_f64())
}
