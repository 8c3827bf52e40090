//! `parctl` for scripts: `--json` on every command (errors too), the
//! documented exit status of each failure, the timeout on a manager that
//! does not answer, and the stored definition (`show`, `update`, `edit`,
//! `validate`, `define --dry-run`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Env, PARCTL};
use parvm_tests::{run, Finished};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn json_of(f: &Finished) -> Value {
    serde_json::from_str(f.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", f.stdout, f.stderr))
}

/// `parctl --json ARGS`: (exit status, the JSON printed).
fn pj(env: &Env, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let f = env.parctl(&all);
    (f.code().unwrap(), json_of(&f))
}

fn ok_json(env: &Env, args: &[&str]) -> Value {
    let (code, v) = pj(env, args);
    assert_eq!(code, 0, "{args:?}: {v}");
    v
}

/// An error of `kind` with exit status `code`, one line of message.
fn err_json(env: &Env, args: &[&str], kind: &str, code: i32) -> String {
    let (got, v) = pj(env, args);
    assert_eq!(
        (got, v["error"]["kind"].as_str()),
        (code, Some(kind)),
        "{args:?}: {v}"
    );
    let msg = v["error"]["message"].as_str().unwrap().to_string();
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

/// The exit status of each error kind, as docs/manager.md documents it.
const KINDS: [&str; 15] = [
    "bad_request",
    "not_found",
    "already_exists",
    "invalid_state",
    "permission_denied",
    "version_mismatch",
    "start_failed",
    "internal",
    "unknown_cookie",
    "wrong_partition",
    "cookie_used",
    "rights_escalation",
    "gpa_conflict",
    "too_large",
    "busy",
];

/// An error of whatever kind, with that kind's exit status.
fn err_any(env: &Env, args: &[&str]) -> String {
    let (code, v) = pj(env, args);
    let kind = v["error"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{args:?}: {v}"));
    let want = 10 + KINDS.iter().position(|k| *k == kind).unwrap() as i32;
    assert_eq!(code, want, "{args:?}: {v}");
    kind.to_string()
}

#[test]
fn every_command_speaks_json_and_each_failure_has_its_exit_status() {
    let env = Env::new("cli-json");
    let a = env.hang_definition("a", "never");
    let b = env.hang_definition("b", "never");
    assert_eq!(ok_json(&env, &["define", &a])["state"], "defined");
    ok_json(&env, &["define", &b]);
    assert_eq!(ok_json(&env, &["validate", &a])["valid"], true);
    assert_eq!(
        ok_json(&env, &["list"])["partitions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(ok_json(&env, &["status", "a"])["name"], "a");
    assert_eq!(ok_json(&env, &["show", "a"])["definition"]["name"], "a");
    assert_eq!(
        ok_json(&env, &["update", "a", "--restart", "on-failure"])["restart"],
        "on-failure"
    );
    assert_eq!(ok_json(&env, &["start", "a"])["state"], "running");
    ok_json(&env, &["start", "b"]);
    assert_eq!(ok_json(&env, &["pause", "a"])["state"], "paused");
    assert_eq!(ok_json(&env, &["resume", "a"])["state"], "running");
    let seg = ok_json(&env, &["segment", "create", "a/buf", "--size", "64K"]);
    assert_eq!(seg["size"], 65536);
    let g = ok_json(&env, &["grant", "a/buf", "--to", "b", "--rights", "rw"]);
    let cookie = g["cookie"].as_str().unwrap().to_string();
    assert_eq!(
        ok_json(&env, &["accept", &cookie, "--as", "b"])["state"],
        "accepted"
    );
    let g2 = ok_json(&env, &["grant", "a/buf", "--to", "b", "--rights", "ro"]);
    let ro = g2["cookie"].as_str().unwrap().to_string();
    ok_json(&env, &["accept", &ro, "--as", "b"]);
    let copied = ok_json(
        &env,
        &[
            "copy", "--as", "b", "--src", &ro, "--dst", &cookie, "--len", "4096",
        ],
    );
    assert_eq!(copied["bytes"], 4096);
    assert_eq!(
        ok_json(&env, &["grants"])["grants"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let e = err_json(
        &env,
        &["regrant", &ro, "--as", "b", "--to", "a", "--rights", "rw"],
        "rights_escalation",
        21,
    );
    assert!(e.contains("rights"), "{e}");
    assert_eq!(
        ok_json(&env, &["revoke", &cookie])["revoked"][0]["state"],
        "revoked"
    );
    let shared = env.dir.join("share.json");
    std::fs::write(
        &shared,
        json!({"segments": [{"owner": "b", "id": "s", "size_kib": 4}]}).to_string(),
    )
    .unwrap();
    let sh = ok_json(&env, &["share", shared.to_str().unwrap()]);
    assert_eq!(sh["segments"][0]["name"], "b/s");
    let logs = ok_json(&env, &["logs", "a"]);
    assert!(
        logs["log"].is_string() && logs["path"].is_string(),
        "{logs}"
    );
    // One JSON object a line.
    let ev = env.ok(&["--json", "events", "--no-follow"]);
    let ev: Vec<Value> = ev
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ev[0]["type"], "defined");
    assert!(ev.iter().any(|e| e["type"] == "grant_revoked"), "{ev:?}");
    let e = err_json(&env, &["pool", "show"], "bad_request", 10);
    assert!(e.contains("no shared memory pool"), "{e}");
    assert_eq!(
        ok_json(&env, &["pool", "create", "--size", "16"])["size_mib"],
        16
    );
    assert_eq!(
        ok_json(&env, &["pool", "resize", "--size", "32"])["size_mib"],
        32
    );
    assert_eq!(ok_json(&env, &["pool", "show"])["size_mib"], 32);
    err_any(&env, &["pool", "add-paging", "vios:nobody/d"]);
    err_any(&env, &["pool", "remove-paging", "vios:nobody/d"]);
    assert_eq!(ok_json(&env, &["restart", "b"])["state"], "running");
    assert_eq!(ok_json(&env, &["stop", "a"])["state"], "stopped");
    // Stop is idempotent; start of a running partition is not.
    assert_eq!(ok_json(&env, &["stop", "a"])["state"], "stopped");
    err_json(&env, &["start", "b"], "invalid_state", 13);
    err_json(&env, &["undefine", "b"], "invalid_state", 13);
    assert_eq!(ok_json(&env, &["kill", "b"])["state"], "stopped");
    assert_eq!(ok_json(&env, &["undefine", "b"])["name"], "b");
    let c = err_json(&env, &["console", "a"], "error", 1);
    assert!(c.contains("--json does not apply"), "{c}");

    // The failures, each with its kind and exit status (docs/manager.md).
    err_json(&env, &["status", "ghost"], "not_found", 11);
    err_json(&env, &["define", &a], "already_exists", 12);
    err_json(
        &env,
        &[
            "accept",
            "pvg1-0123456789abcdef0123456789abcdef",
            "--as",
            "a",
        ],
        "unknown_cookie",
        18,
    );
    err_json(
        &env,
        &["accept", "pvg1-nothex", "--as", "a"],
        "bad_request",
        10,
    );
    err_json(
        &env,
        &["segment", "create", "a/huge", "--size", "2G"],
        "too_large",
        23,
    );
    let missing = env.dir.join("missing.json");
    let e = err_json(
        &env,
        &["define", missing.to_str().unwrap()],
        "bad_request",
        10,
    );
    assert!(e.contains("missing.json"), "{e}");
    let usage = env.parctl(&["--json", "frobnicate"]);
    assert_eq!(usage.code(), Some(2));
    assert_eq!(json_of(&usage)["error"]["kind"], "usage");
    let nowhere = env.dir.join("nowhere.sock");
    let f = env.parctl(&["--json", "--socket", nowhere.to_str().unwrap(), "list"]);
    assert_eq!(f.code(), Some(3));
    assert_eq!(json_of(&f)["error"]["kind"], "unreachable");
    // Without --json: the same status, one line on stderr.
    let e = env.fails_with(&["status", "ghost"], 11);
    assert_eq!(e, "parctl: error: no partition named `ghost`");
}

#[test]
fn a_manager_that_does_not_answer_times_out_with_a_clear_message() {
    let env = Env::new("cli-timeout");
    let pid = env.manager.as_ref().unwrap().id() as i32;
    // SAFETY: stopping our own child; resumed below.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let f = env.parctl(&["--timeout", "1", "list"]);
    let took = started.elapsed();
    let g = env.parctl(&["--json", "--timeout", "0.5", "status", "x"]);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert_eq!(f.code(), Some(4), "{}", f.stderr);
    assert!(
        f.stderr.contains("did not answer within 1 s"),
        "{}",
        f.stderr
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(g.code(), Some(4));
    assert_eq!(json_of(&g)["error"]["kind"], "timeout");
    // Answered again once it runs.
    env.ok(&["list"]);
    let bad = env.parctl(&["--timeout", "soon", "list"]);
    assert_eq!(bad.code(), Some(2));
    assert!(
        bad.stderr.contains("not a number of seconds"),
        "{}",
        bad.stderr
    );
}

#[test]
fn show_update_edit_validate_and_dry_run() {
    let env = Env::new("cli-definition");
    let file = env.hang_definition("d", "never");
    // validate needs no manager; a bad file names itself and the field.
    let f = run(
        {
            let mut c = Command::new(PARCTL);
            c.args(["--socket", "/nonexistent/pm.sock", "validate", &file]);
            c
        },
        Duration::from_secs(10),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    assert!(
        f.stdout.contains("a valid partition definition of `d`"),
        "{}",
        f.stdout
    );
    let bad = env.dir.join("bad.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    v["vcpus"] = json!(0);
    std::fs::write(&bad, v.to_string()).unwrap();
    let e = env.fails_with(&["validate", bad.to_str().unwrap()], 10);
    assert!(e.contains("bad.json") && e.contains("vcpus"), "{e}");
    v["vcpus"] = json!(1);
    v["frobs"] = json!(true);
    std::fs::write(&bad, v.to_string()).unwrap();
    let e = env.fails_with(&["validate", bad.to_str().unwrap()], 10);
    assert!(e.contains("frobs"), "{e}");

    // A dry run asks the manager, and defines nothing.
    let out = env.ok(&["define", "--dry-run", &file]);
    assert_eq!(out.trim(), "d: valid (dry run: nothing defined)");
    assert!(!env.ok(&["list"]).contains("\nd "));
    env.ok(&["define", &file]);
    let e = env.fails_with(&["define", "--dry-run", &file], 12);
    assert!(e.contains("already defined"), "{e}");

    // show prints a file define and update take.
    let shown: Value = serde_json::from_str(&env.ok(&["show", "d"])).unwrap();
    assert_eq!(shown["name"], "d");
    assert_eq!(shown["restart"], "never");
    assert_eq!(shown["vcpus"], 1);
    let mut changed = shown.clone();
    changed["vcpus"] = json!(2);
    let edited = env.dir.join("edited.json");
    std::fs::write(&edited, changed.to_string()).unwrap();
    assert_eq!(
        env.ok(&["update", "d", edited.to_str().unwrap()]).trim(),
        "updated d"
    );
    assert_eq!(env.status("d")["vcpus"], 2);
    // Renaming is refused; so is a new definition while it runs.
    changed["name"] = json!("other");
    std::fs::write(&edited, changed.to_string()).unwrap();
    let e = env.fails_with(&["update", "d", edited.to_str().unwrap()], 10);
    assert!(e.contains("cannot be renamed"), "{e}");
    env.ok(&["start", "d"]);
    let e = env.fails_with(&["update", "d", &file], 13);
    assert!(e.contains("stop it before changing its definition"), "{e}");
    env.ok(&["update", "d", "--restart", "on-failure"]);
    assert_eq!(env.status("d")["restart"], "on-failure");
    env.ok(&["stop", "d"]);

    // edit: through $EDITOR (here sed), then update.
    let mut cmd = Command::new(PARCTL);
    cmd.args(["edit", "d"])
        .env("PARVM_SOCKET", &env.socket)
        .env_remove("VISUAL")
        .env("EDITOR", r#"sed -i 's/"vcpus": 2/"vcpus": 3/'"#);
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.code(), Some(0), "{}{}", f.stdout, f.stderr);
    assert_eq!(f.stdout.trim(), "updated d");
    assert_eq!(env.status("d")["vcpus"], 3);
    let mut cmd = Command::new(PARCTL);
    cmd.args(["edit", "d"])
        .env("PARVM_SOCKET", &env.socket)
        .env_remove("VISUAL")
        .env("EDITOR", "true");
    let f = run(cmd, Duration::from_secs(10));
    assert_eq!(f.stdout.trim(), "d: unchanged", "{}", f.stderr);
    // The definition is kept across a manager restart.
    let shown: Value = serde_json::from_str(&env.ok(&["show", "d"])).unwrap();
    assert_eq!(shown["vcpus"], 3);
    assert_eq!(shown["restart"], "on-failure");
}
