//! `--run-as` (docs/security.md, "Running the VMM and the VIOS
//! unprivileged"): the real manager, run as root, starts every VMM and VIOS
//! as uid 65534 with only a private KVM node and files that user may open;
//! a file it may not open fails the start with one line naming it and
//! nothing started; an unknown user stops the manager at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use parvm_tests::guests::guest_path;
use parvm_tests::run;
use parvm_tests::sandbox::{chown_tree, is_root, private_device_node, NOBODY};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Whether this host can run these tests (root, a KVM device); says why not.
fn can_run() -> bool {
    if !is_root() {
        eprintln!("not root: the manager cannot switch users; skipping");
        return false;
    }
    if !Path::new("/dev/kvm").exists() {
        eprintln!("no /dev/kvm; skipping");
        return false;
    }
    true
}

/// A directory only `nobody` reaches, holding a private KVM node (the real
/// /dev/kvm untouched), the tiny guest and a disk image.
struct NobodyFiles {
    dir: PathBuf,
}

impl NobodyFiles {
    fn new(test: &str) -> NobodyFiles {
        let dir = parvm_tests::scratch_dir(&format!("runas-files-{test}"));
        std::fs::copy(guest_path("tiny.elf"), dir.join("tiny.elf")).unwrap();
        std::fs::write(dir.join("data.img"), vec![0x5au8; 1 << 20]).unwrap();
        chown_tree(&dir, NOBODY).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        private_device_node(Path::new("/dev/kvm"), &dir.join("kvm"), NOBODY).unwrap();
        NobodyFiles { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A manager running its partitions as nobody with this KVM node.
    fn manager(&self, test: &str) -> Env {
        Env::with(
            test,
            vmm_binary(),
            &["--run-as", "nobody", "--kvm-device", &self.path("kvm")],
        )
    }
}

impl Drop for NobodyFiles {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn write_json(dir: &Path, name: &str, v: serde_json::Value) -> String {
    let p = dir.join(name);
    std::fs::write(&p, v.to_string()).unwrap();
    p.display().to_string()
}

/// A `/proc/PID/status` field, whitespace-separated.
fn status_field(pid: u32, key: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Real, effective, saved and file-system uid (and gid) all 65534, no
/// other group, no new privileges.
fn assert_runs_as_nobody(what: &str, pid: u32) {
    let n = NOBODY.to_string();
    let n = n.as_str();
    assert_eq!(status_field(pid, "Uid:"), [n, n, n, n], "{what} uids");
    assert_eq!(status_field(pid, "Gid:"), [n, n, n, n], "{what} gids");
    assert_eq!(status_field(pid, "Groups:"), [n], "{what} groups");
    assert_eq!(status_field(pid, "NoNewPrivs:"), ["1"], "{what}");
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (m.uid(), m.gid())
}

#[test]
fn partitions_run_as_nobody_boot_use_a_vios_disk_and_reattach() {
    if !can_run() {
        return;
    }
    let files = NobodyFiles::new("main");
    let mut env = files.manager("runas-main");
    ensure_vios(&env.vmm);

    // A VMM as nobody: the guest boots (its console is the manager's log).
    let hang = write_json(
        &env.dir,
        "hang.json",
        serde_json::json!({
            "name": "hang", "memory_mib": 16, "kernel": files.path("tiny.elf"),
            "cmdline": "console=ttyS0 parvm.test=hang",
        }),
    );
    env.ok(&["define", &hang]);
    env.ok(&["start", "hang"]);
    let pid = pid_of(&env.wait_state("hang", "running", Duration::from_secs(20)));
    assert_runs_as_nobody("vmm", pid);
    env.wait_log("hang", "parvm-guest: hanging");
    // Its definition and console are the user's, in the operator's still
    // private state directory; it got them as descriptors.
    let uid_gid = (NOBODY, NOBODY);
    assert_eq!(owner(&env.state.join("partitions/hang.json")), uid_gid);
    assert_eq!(owner(&env.state.join("logs/hang.log")), uid_gid);
    assert_eq!(owner(&env.state).0, 0);
    assert_eq!(
        std::fs::metadata(&env.state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(cmdline.contains("--config /proc/self/fd/"), "{cmdline}");
    assert!(
        !cmdline.contains(&env.state.display().to_string()),
        "{cmdline}"
    );

    // A VIOS as nobody serving a client VMM as nobody.
    let vios = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1",
            "disks": [{"id": "data", "path": files.path("data.img")}],
        }),
    );
    env.ok(&["define", &vios]);
    env.ok(&["start", "vios1"]);
    assert_runs_as_nobody("vios", pid_of(&env.status("vios1")));
    let web = write_json(
        &env.dir,
        "web.json",
        serde_json::json!({
            "name": "web", "memory_mib": 64, "kernel": files.path("tiny.elf"),
            "cmdline": "parvm.test=blk",
            "disks": [{"id": "data", "path": "vios:vios1/data"}],
        }),
    );
    env.ok(&["define", &web]);
    let cookie = env
        .ok(&["grant", "vios1/data", "--to", "web", "--rights", "rw"])
        .trim()
        .to_string();
    env.ok(&["accept", &cookie, "--as", "web"]);
    env.ok(&["start", "web"]);
    env.wait_state("web", "stopped", Duration::from_secs(30));
    let log = env.log_of("web");
    assert!(
        log.contains("parvm-guest: blk capacity=2048 ro=0 serial=data\n"),
        "{log}"
    );
    assert!(log.contains(" match=yes "), "{log}");

    // The manager goes away and comes back: the partitions (uid 65534)
    // re-attach on its socket, which their group may dial.
    let pids = [pid_of(&env.status("hang")), pid_of(&env.status("vios1"))];
    env.kill_manager();
    env.start_manager();
    for (name, pid) in ["hang", "vios1"].into_iter().zip(pids) {
        let s = env.wait_for(name, Duration::from_secs(10), "re-attached", |s| {
            s["attached"] == true
        });
        assert_eq!(pid_of(&s), pid);
        assert_eq!(s["state"], "running");
    }
    assert_eq!(owner(&env.socket), (0, NOBODY));
    // Their uid may re-attach, nothing else.
    let mut cmd = Command::new(PARCTL);
    cmd.arg("--socket").arg(&env.socket).arg("list");
    std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
    std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    let f = run(cmd, Duration::from_secs(10));
    // permission_denied
    assert_eq!(f.code(), Some(14), "{}{}", f.stdout, f.stderr);
    assert!(f.stderr.contains("it may only re-attach"), "{}", f.stderr);
    env.ok(&["stop", "hang"]);
    env.ok(&["stop", "vios1"]);
}

#[test]
fn a_file_the_user_cannot_open_fails_the_start_naming_it() {
    if !can_run() {
        return;
    }
    let files = NobodyFiles::new("denied");
    let env = files.manager("runas-denied");
    // The operator's own kernel, readable by root alone.
    let kernel = env.dir.join("private.elf");
    std::fs::copy(guest_path("tiny.elf"), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A disk nobody may read but not write.
    let img = env.dir.join("ro.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cases = [
        (
            "k",
            serde_json::json!({"name": "k", "memory_mib": 16, "kernel": kernel}),
            format!(
                "uid 65534 (nobody) cannot read {}: Permission denied",
                kernel.display()
            ),
        ),
        (
            "d",
            serde_json::json!({
                "name": "d", "memory_mib": 16, "kernel": files.path("tiny.elf"),
                "disks": [{"id": "data", "path": img}],
            }),
            format!("cannot read and write {}: Permission denied", img.display()),
        ),
    ];
    let mut cases = cases.to_vec();
    // A paging device under the manager comes from the pool, brokered
    // like a vios: disk: a socket path of its own is refused at define.
    let pg = write_json(
        &env.dir,
        "pg.json",
        serde_json::json!({
            "name": "pg", "memory_mib": 16, "kernel": files.path("tiny.elf"),
            "memory": {"mode": "shared", "paging": "vhost-user:/nonexistent/pager.sock"},
        }),
    );
    let e = env.fails(&["define", &pg]);
    assert!(
        e.contains("paging device vhost-user:/nonexistent/pager.sock: a partition run by the manager pages on a device of the shared memory pool"),
        "{e}"
    );
    // A pool with a paging device on a VIOS (run as nobody too), so that
    // a shared-memory start gets as far as the user's checks.
    let paging = files.dir.join("pg.img");
    std::fs::File::create(&paging)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    std::os::unix::fs::chown(&paging, Some(NOBODY), Some(NOBODY)).unwrap();
    ensure_vios(&env.vmm);
    let vios = write_json(
        &env.dir,
        "vios1.json",
        serde_json::json!({
            "kind": "vios", "name": "vios1",
            "disks": [{"id": "pg", "path": paging}],
        }),
    );
    env.ok(&["define", &vios]);
    env.ok(&["start", "vios1"]);
    env.ok(&[
        "pool",
        "create",
        "--size",
        "16",
        "--paging",
        "vios:vios1/pg",
    ]);
    // A pager's userfaultfd serves KVM's faults: as uid 65534 only where
    // the kernel allows that to everyone.
    let uffd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if !uffd.is_empty() && uffd.trim() != "1" {
        cases.push((
            "sh",
            serde_json::json!({
                "name": "sh", "memory_mib": 16, "kernel": files.path("tiny.elf"),
                "memory": {"mode": "shared"},
            }),
            "cannot page a shared-memory partition: userfaultfd serving KVM's faults needs vm.unprivileged_userfaultfd=1".to_string(),
        ));
    }
    for (name, def, want) in cases {
        let def = write_json(&env.dir, &format!("{name}.json"), def);
        env.ok(&["define", &def]);
        let e = env.fails(&["start", name]);
        assert!(
            e.contains(&format!("partition `{name}` did not start: ")) && e.contains(&want),
            "want `{want}` in: {e}"
        );
        // Nothing half-started: never spawned, nothing written for it.
        let s = env.status(name);
        assert_eq!(s["state"], "defined", "{s}");
        assert!(s["pid"].is_null(), "{s}");
        assert!(!env.state.join(format!("partitions/{name}.json")).exists());
        assert!(!env.state.join(format!("logs/{name}.vmm.log")).exists());
    }
    // The shared-memory start that failed holds no paging device.
    let pool: serde_json::Value =
        serde_json::from_str(&env.ok(&["pool", "show", "--json"])).unwrap();
    assert!(pool["paging"][0]["partition"].is_null(), "{pool}");
    env.ok(&["stop", "vios1"]);
    // The operator's files were not changed to fit.
    assert_eq!(owner(&kernel), (0, 0));
    assert_eq!(
        std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
        0o644
    );
    // Readable (and read-only in the definition) is enough.
    let ro = write_json(
        &env.dir,
        "ro.json",
        serde_json::json!({
            "name": "ro", "memory_mib": 16, "kernel": files.path("tiny.elf"),
            "cmdline": "console=ttyS0 parvm.test=hang",
            "disks": [{"id": "data", "path": img, "read_only": true}],
        }),
    );
    env.ok(&["define", &ro]);
    env.ok(&["start", "ro"]);
    env.wait_log("ro", "parvm-guest: hanging");
    env.ok(&["stop", "ro"]);
}

/// Runs the manager with `extra` flags, expecting it to refuse to start:
/// its one-line error.
fn manager_refuses(dir: &Path, extra: &[&str]) -> String {
    let mut cmd = Command::new(MANAGER);
    cmd.arg("--socket")
        .arg(dir.join("pm.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra);
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(1), "{}{}", f.stdout, f.stderr);
    let line = f.stderr.trim_end().to_string();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.starts_with("partition-manager: error: "), "{line}");
    line
}

#[test]
fn an_unknown_user_or_an_unusable_kvm_node_stops_the_manager_at_once() {
    let dir = parvm_tests::scratch_dir("runas-refused");
    let e = manager_refuses(&dir, &["--run-as", "no-such-user-parvm"]);
    assert!(
        e.contains("--run-as no-such-user-parvm: no user `no-such-user-parvm`"),
        "{e}"
    );
    let e = manager_refuses(&dir, &["--run-as", "nobody:no-such-group-parvm"]);
    assert!(e.contains("no group `no-such-group-parvm`"), "{e}");
    let e = manager_refuses(&dir, &["--run-as", "root"]);
    assert!(e.contains("that is root"), "{e}");
    if !is_root() {
        let e = manager_refuses(&dir, &["--run-as", "nobody"]);
        assert!(e.contains("only root can"), "{e}");
    } else {
        // A node only root may open.
        let node = dir.join("kvm-root");
        std::fs::write(&node, b"").unwrap();
        std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o600)).unwrap();
        let node = node.display().to_string();
        let e = manager_refuses(&dir, &["--run-as", "nobody", "--kvm-device", &node]);
        assert!(e.contains("no VMM could start"), "{e}");
        assert!(
            e.contains(&format!("cannot read and write {node}: Permission denied")),
            "{e}"
        );
        // A socket that user cannot reach.
        let private = dir.join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let ok_node = dir.join("kvm-nobody");
        std::fs::write(&ok_node, b"").unwrap();
        std::os::unix::fs::chown(&ok_node, Some(NOBODY), Some(NOBODY)).unwrap();
        let mut cmd = Command::new(MANAGER);
        cmd.arg("--socket")
            .arg(private.join("pm.sock"))
            .arg("--state-dir")
            .arg(dir.join("state2"))
            .args(["--run-as", "nobody", "--kvm-device"])
            .arg(&ok_node);
        let f = run(cmd, Duration::from_secs(10));
        assert_eq!(f.code(), Some(1), "{}{}", f.stdout, f.stderr);
        assert_eq!(f.stderr.trim_end().lines().count(), 1, "{}", f.stderr);
        assert!(f.stderr.contains("cannot connect to"), "{}", f.stderr);
        assert!(f.stderr.contains("could not re-attach"), "{}", f.stderr);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
