//! The manager as a service, started from contrib/systemd's unit file
//! under a notifier like systemd's: READY=1 on `$NOTIFY_SOCKET` once it
//! listens, JSON log lines, and SIGTERM handled in order (STOPPING=1, the
//! sockets removed, one log line, exit 0, partitions left running for the
//! next manager, which takes them back).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{alive, pid_of, vmm_binary, MANAGER, PARCTL};
use parvm_tests::guests::guest_path;
use serde_json::Value;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The unit's `[Service]` settings, `key=value` (repeated keys in order).
fn unit(name: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../contrib/systemd")
        .join(name);
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(u: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    u.iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// The unit's ExecStart with the installed paths moved into `dir`.
fn exec_start(u: &[(String, String)], dir: &Path) -> Command {
    let line = setting(u, "ExecStart")[0];
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/partition-manager"));
    let mut cmd = Command::new(MANAGER);
    for w in words {
        let w = w
            .replace("/run/parvm", &dir.join("run").display().to_string())
            .replace("/var/lib/parvm", &dir.join("state").display().to_string())
            .replace("/usr/local/bin/vmm", &vmm_binary().display().to_string());
        cmd.arg(w);
    }
    for env in setting(u, "Environment") {
        let (k, v) = env.split_once('=').unwrap();
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn parctl(socket: &Path, args: &[&str]) -> String {
    let f = parvm_tests::run(
        {
            let mut c = Command::new(PARCTL);
            c.args(args).env("PARVM_SOCKET", socket);
            c
        },
        Duration::from_secs(30),
    );
    assert_eq!(
        f.code(),
        Some(0),
        "parctl {args:?}: {}{}",
        f.stdout,
        f.stderr
    );
    f.stdout
}

fn spawn(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    cmd.stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "the manager did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_unit_starts_a_notify_service_that_stops_in_order_on_sigterm() {
    let u = unit("parvm-manager.service");
    assert_eq!(setting(&u, "Type"), ["notify"]);
    assert_eq!(
        setting(&u, "KillMode"),
        ["process"],
        "partitions must outlive a stop"
    );
    let dir = parvm_tests::scratch_dir("pm-service");
    let run: PathBuf = dir.join("run");
    let socket = run.join("pm.sock");
    let notify_path = dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = dir.join("manager.log");
    let mut cmd = exec_start(&u, &dir);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let mut manager = spawn(cmd, &log);
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("no READY=1 within 20 s");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // Ready means listening: both sockets answer at once.
    UnixStream::connect(&socket).unwrap();
    UnixStream::connect(run.join("api.sock")).unwrap();

    let def = dir.join("svc.json");
    let kernel = guest_path("tiny.elf");
    std::fs::write(
        &def,
        serde_json::json!({"name": "svc", "memory_mib": 16, "kernel": kernel,
            "cmdline": "console=ttyS0 parvm.test=hang"})
        .to_string(),
    )
    .unwrap();
    parctl(&socket, &["define", def.to_str().unwrap()]);
    let s: Value = serde_json::from_str(&parctl(&socket, &["--json", "start", "svc"])).unwrap();
    let pid = pid_of(&s);

    // SAFETY: signalling our own child.
    unsafe { libc::kill(manager.id() as i32, libc::SIGTERM) };
    let n = notify.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    let status = wait_exit(&mut manager, Duration::from_secs(10));
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(
        !socket.exists() && !run.join("api.sock").exists(),
        "sockets left behind"
    );
    assert!(alive(pid), "the partition died with the manager");
    // The log is JSON lines (Environment=PARVM_LOG_FORMAT=json), the last
    // one saying why it stopped.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "partition manager listening"),
        "{text}"
    );
    let last = lines.last().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("partition manager stopping"),
        "{last}"
    );
    assert_eq!(last["signal"], "SIGTERM");
    assert_eq!(last["running"], 1);

    // The next manager (an upgrade, say) takes the partition back.
    let mut next = spawn(exec_start(&u, &dir), &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(&socket).is_ok() {
            let s: Value =
                serde_json::from_str(&parctl(&socket, &["--json", "status", "svc"])).unwrap();
            if s["attached"] == true {
                assert_eq!(s["state"], "running");
                assert_eq!(pid_of(&s), pid);
                break;
            }
        }
        assert!(Instant::now() < deadline, "svc did not re-attach");
        std::thread::sleep(Duration::from_millis(50));
    }
    parctl(&socket, &["stop", "svc"]);
    // Its channel closes just before the process is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(Instant::now() < deadline, "svc still runs after stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = next.kill();
    let _ = next.wait();
}

#[test]
fn the_vios_template_names_a_listening_socket_per_instance() {
    let u = unit("parvm-vios@.service");
    let exec = setting(&u, "ExecStart")[0];
    assert!(
        exec.starts_with("/usr/local/bin/vios --listen /run/parvm/vios-%i.sock"),
        "{exec}"
    );
    assert_eq!(setting(&u, "EnvironmentFile"), ["/etc/parvm/vios/%i.conf"]);
}

#[test]
fn scripts_install_puts_binaries_units_completions_and_the_man_page_in_place() {
    let dest = parvm_tests::scratch_dir("pm-install");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The binaries this test run was built with (target/debug).
    let f = parvm_tests::run(
        {
            let mut c = Command::new(repo.join("scripts/install"));
            c.args(["--profile", "debug", "--no-build", "--destdir"])
                .arg(&dest);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(f.code(), Some(0), "{}{}", f.stdout, f.stderr);
    let root = dest.join("usr/local");
    for b in ["partition-manager", "parctl", "vmm", "vios"] {
        assert!(root.join("bin").join(b).exists(), "{b} not installed");
    }
    let v = parvm_tests::run(
        {
            let mut c = Command::new(root.join("bin/parctl"));
            c.arg("--version");
            c
        },
        Duration::from_secs(10),
    );
    assert!(v.stdout.starts_with("parctl "), "{}", v.stdout);
    let man = std::fs::read_to_string(root.join("share/man/man1/parctl.1")).unwrap();
    assert!(man.contains(".TH parctl 1"), "{man}");
    let bash =
        std::fs::read_to_string(root.join("share/bash-completion/completions/parctl")).unwrap();
    assert!(
        bash.contains("events") && bash.contains("validate"),
        "completions lack verbs"
    );
    let unit =
        std::fs::read_to_string(dest.join("etc/systemd/system/parvm-manager.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/partition-manager "),
        "{unit}"
    );
    assert!(root.join("share/doc/parvm/docs/api.md").exists());
}

#[test]
fn console_logs_are_rotated_by_size() {
    let env = common::Env::with("rotate", vmm_binary(), &["--log-max-mib", "1"]);
    env.ok(&["define", &env.hang_definition("chatty", "never")]);
    env.ok(&["start", "chatty"]);
    let log = env.state.join("logs/chatty.log");
    // 2 MiB more than the limit allows, appended as the VMM appends.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(&vec![b'x'; 2 << 20]).unwrap();
    }
    let old = env.state.join("logs/chatty.log.1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !old.exists() {
        assert!(
            Instant::now() < deadline,
            "not rotated:\n{}",
            env.manager_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(std::fs::metadata(&old).unwrap().len() >= 2 << 20);
    assert!(std::fs::metadata(&log).unwrap().len() < 1 << 20);
    assert!(env.manager_log().contains("log rotated"));
    env.ok(&["stop", "chatty"]);
}
