//! The HTTP API of the real daemon, driven with `curl --unix-socket` as
//! docs/api.md shows, its event stream, `/metrics` parsed by Prometheus's
//! own parser, schemathesis against the served OpenAPI document, and the
//! connection handling under broken, oversized and stalled input.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{alive, kill9, pid_of, pyenv, sample, scrape, Env, PARCTL};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One request with curl on the API socket: (status, body).
fn curl(env: &Env, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "--unix-socket"])
        .arg(env.dir.join("api.sock"))
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d"])
            .arg(b.to_string());
    }
    cmd.arg(format!("http://localhost{path}"));
    let out = cmd
        .output()
        .expect("curl (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn curl_json(env: &Env, method: &str, path: &str, body: Option<&Value>, want: u16) -> Value {
    let (code, text) = curl(env, method, path, body);
    assert_eq!(code, want, "{method} {path}: {text}\n{}", env.manager_log());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
}

/// The hang guest's definition as `parctl define` would send it.
fn definition(env: &Env, name: &str) -> Value {
    let file = env.hang_definition(name, "never");
    let mut def: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    def.as_object_mut().unwrap().remove("restart");
    def
}

#[test]
fn curl_defines_starts_lists_grants_and_stops_partitions() {
    let env = Env::new("api-curl");
    let mut def = definition(&env, "a");
    def["segments"] = json!([{"id": "x", "size_kib": 4}]);
    // Manager-side fields travel beside the definition.
    let e = curl_json(
        &env,
        "POST",
        "/v1/partitions",
        Some(&json!({"definition": def})),
        400,
    );
    assert_eq!(e["error"]["kind"], "bad_request");
    let def = definition(&env, "a");
    let body = json!({"definition": def, "restart": "never",
        "segments": [{"id": "buf", "size_kib": 64}]});
    // A dry run checks and defines nothing.
    let s = curl_json(
        &env,
        "POST",
        "/v1/partitions?dry_run=true",
        Some(&body),
        200,
    );
    assert_eq!(s["state"], "defined");
    assert_eq!(
        curl_json(&env, "GET", "/v1/partitions", None, 200)["partitions"],
        json!([])
    );
    let s = curl_json(&env, "POST", "/v1/partitions", Some(&body), 201);
    assert_eq!(
        (s["name"].as_str(), s["state"].as_str()),
        (Some("a"), Some("defined"))
    );
    let e = curl_json(&env, "POST", "/v1/partitions", Some(&body), 409);
    assert_eq!(e["error"]["kind"], "already_exists");
    // As `curl -d` sends it when not told the type (docs/api.md).
    let b = json!({"definition": definition(&env, "b")});
    let out = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(env.dir.join("api.sock"))
        .args(["http://localhost/v1/partitions", "-d", &b.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n201"), "{text}");
    let (code, text) = {
        let mut c = Command::new("curl");
        c.args(["-sS", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(env.dir.join("api.sock"))
            .args([
                "-H",
                "Content-Type: text/xml",
                "-d",
                "<x/>",
                "http://localhost/v1/grants",
            ]);
        let t = String::from_utf8(c.output().unwrap().stdout).unwrap();
        let (b, c) = t.rsplit_once('\n').unwrap();
        (c.to_string(), b.to_string())
    };
    assert_eq!(code, "415", "{text}");

    let s = curl_json(&env, "POST", "/v1/partitions/a/start", None, 200);
    assert_eq!(s["state"], "running");
    assert!(alive(pid_of(&s)));
    curl_json(&env, "POST", "/v1/partitions/b/start", None, 200);
    let list = curl_json(&env, "GET", "/v1/partitions", None, 200);
    let names: Vec<&str> = list["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // The same answer as parctl's.
    let parctl: Value = serde_json::from_str(&env.ok(&["list", "--json"])).unwrap();
    assert_eq!(parctl["partitions"][0]["pid"], list["partitions"][0]["pid"]);

    // Grant a's segment to b, b accepts, a revokes.
    let g = curl_json(
        &env,
        "POST",
        "/v1/grants",
        Some(&json!({"segment": "a/buf", "grantee": "b", "rights": "rw"})),
        201,
    );
    let cookie = g["cookie"].as_str().unwrap().to_string();
    assert!(cookie.starts_with("pvg1-"));
    let g = curl_json(
        &env,
        "POST",
        "/v1/grants/accept",
        Some(&json!({"cookie": cookie, "partition": "b"})),
        200,
    );
    assert_eq!(g["state"], "accepted");
    assert!(g["gpa"].as_u64().is_some());
    let table = curl_json(&env, "GET", "/v1/grants", None, 200);
    assert_eq!(table["grants"][0]["state"], "accepted");
    assert_eq!(table["segments"][0]["name"], "a/buf");
    let segs = curl_json(&env, "GET", "/v1/segments", None, 200);
    assert_eq!(segs["segments"], table["segments"]);
    let e = curl_json(
        &env,
        "POST",
        "/v1/grants/accept",
        Some(&json!({"cookie": "pvg1-0123456789abcdef0123456789abcdef", "partition": "b"})),
        404,
    );
    assert_eq!(e["error"]["kind"], "unknown_cookie");
    let r = curl_json(
        &env,
        "POST",
        "/v1/grants/revoke",
        Some(&json!({"cookie": cookie})),
        200,
    );
    assert_eq!(r["revoked"][0]["state"], "revoked");

    // The stored definition, and an update of the restart policy.
    let d = curl_json(&env, "GET", "/v1/partitions/a/definition", None, 200);
    assert_eq!(d["definition"]["name"], "a");
    assert_eq!(d["segments"][0]["id"], "buf");
    let s = curl_json(
        &env,
        "PATCH",
        "/v1/partitions/a/definition",
        Some(&json!({"restart": "on-failure"})),
        200,
    );
    assert_eq!(s["restart"], "on-failure");
    let e = curl_json(
        &env,
        "PATCH",
        "/v1/partitions/a/definition",
        Some(&json!({"definition": definition(&env, "a")})),
        409,
    );
    assert_eq!(e["error"]["kind"], "invalid_state");

    // Processor entitlement and the workload policy (docs/workload.md).
    let s = curl_json(
        &env,
        "PATCH",
        "/v1/partitions/a/cpu",
        Some(&json!({"entitled": 0.5, "mode": "capped"})),
        200,
    );
    assert_eq!(s["cpu"]["entitled"], 0.5, "{s}");
    let p = curl_json(&env, "GET", "/v1/policy", None, 200);
    assert_eq!(p["policy"]["enabled"], false);
    let bad = json!({"idle_pct": 95});
    let e = curl_json(&env, "PUT", "/v1/policy", Some(&bad), 400);
    assert!(
        e["error"]["message"].as_str().unwrap().contains("idle_pct"),
        "{e}"
    );
    let p = curl_json(&env, "PUT", "/v1/policy", Some(&json!({"step": 0.2})), 200);
    assert_eq!(p["policy"]["step"], 0.2);

    // Stop, twice: the second is no error.
    for _ in 0..2 {
        let s = curl_json(&env, "POST", "/v1/partitions/a/stop", None, 200);
        assert_eq!(s["state"], "stopped");
    }
    let (code, log) = curl(&env, "GET", "/v1/partitions/b/console", None);
    assert_eq!(code, 200, "{log}");
    curl_json(&env, "POST", "/v1/partitions/b/kill", None, 200);
    let u = curl_json(&env, "DELETE", "/v1/partitions/b", None, 200);
    assert_eq!(u["name"], "b");

    // Errors name what was wrong.
    let e = curl_json(&env, "GET", "/v1/partitions/ghost", None, 404);
    assert_eq!(e["error"]["kind"], "not_found");
    assert_eq!(e["error"]["message"], "no partition named `ghost`");
    let (code, text) = curl(&env, "POST", "/v1/grants", Some(&json!({"segment": 1})));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("request body"), "{text}");
    curl_json(&env, "GET", "/v1/nothing", None, 404);
    let (code, _) = curl(&env, "PUT", "/v1/partitions", None);
    assert_eq!(code, 405);
    curl_json(&env, "POST", "/v1/partitions/a/dance", None, 404);
    // The OpenAPI document is served and names the resources.
    let doc = curl_json(&env, "GET", "/openapi.json", None, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/v1/partitions/{name}/{action}"]["post"].is_object());
}

/// Lines of `parctl events --json` as they come, on a thread.
fn follow(env: &Env) -> (std::process::Child, std::sync::mpsc::Receiver<Value>) {
    let mut child = Command::new(PARCTL)
        .args(["events", "--json"])
        .env("PARVM_SOCKET", &env.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Events from `rx` until one matches `want` (panics after `timeout`).
fn until(
    rx: &std::sync::mpsc::Receiver<Value>,
    seen: &mut Vec<Value>,
    want: impl Fn(&Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => {
                let done = want(&e);
                seen.push(e);
                if done {
                    return;
                }
            }
            Err(_) => panic!("no such event; saw {seen:#?}"),
        }
    }
}

#[test]
fn parctl_events_shows_a_kill_9_restart_as_it_happens() {
    let env = Env::new("api-events");
    let (mut follower, rx) = follow(&env);
    let file = env.hang_definition("r", "on-failure");
    env.ok(&["define", &file]);
    let mut seen = Vec::new();
    until(&rx, &mut seen, |e| {
        e["type"] == "defined" && e["partition"] == "r"
    });
    let pid = pid_of(&serde_json::from_str(&env.ok(&["start", "r", "--json"])).unwrap());
    until(&rx, &mut seen, |e| {
        e["type"] == "state" && e["to"] == "running"
    });
    let before = seen.len();
    let killed = Instant::now();
    kill9(pid);
    until(&rx, &mut seen, |e| {
        e["type"] == "state" && e["to"] == "running"
    });
    // Seen as it happened: the crash, the restart, running again.
    assert!(killed.elapsed() < Duration::from_secs(10));
    let after: Vec<&Value> = seen[before..].iter().collect();
    let kinds: Vec<String> = after
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "state" => format!(
                "{}->{}",
                e["from"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            ),
            t => t.to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "running->crashed",
            "restart_scheduled",
            "crashed->starting",
            "starting->running"
        ],
        "{after:#?}"
    );
    assert_eq!(after[0]["reason"], "vmm killed by signal 9");
    assert_eq!(after[1]["attempt"], 1);
    // In order, numbered one by one.
    let seqs: Vec<u64> = seen.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    // --since replays from there, without following.
    let since = seqs[before - 1];
    let replay = env.ok(&[
        "events",
        "--no-follow",
        "--json",
        "--since",
        &since.to_string(),
    ]);
    let replayed: Vec<Value> = replay
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replayed.len(), after.len(), "{replay}");
    assert_eq!(replayed[0]["seq"], since + 1);
    let text = env.ok(&["events", "--no-follow"]);
    assert!(
        text.contains("r: running -> crashed (vmm killed by signal 9)"),
        "{text}"
    );

    // The same events as server-sent events on the HTTP API.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--max-time",
            "2",
            "-H",
            "Accept: text/event-stream",
            "--unix-socket",
        ])
        .arg(env.dir.join("api.sock"))
        .arg(format!("http://localhost/v1/events?since={since}"))
        .output()
        .unwrap();
    let sse = String::from_utf8(out.stdout).unwrap();
    assert!(
        sse.contains(&format!("id: {}\nevent: state\ndata: {{", since + 1)),
        "{sse}"
    );
    assert!(sse.contains("\"to\":\"crashed\""), "{sse}");
    env.ok(&["stop", "r"]);
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_count_real_requests() {
    let env = Env::new("api-metrics");
    env.ok(&["define", &env.hang_definition("m", "never")]);
    env.ok(&["start", "m"]);
    for _ in 0..3 {
        curl_json(&env, "GET", "/v1/partitions/m", None, 200);
    }
    curl_json(&env, "GET", "/v1/partitions/nope", None, 404);
    let (text, families) = scrape(&env);
    assert!(text.ends_with("# EOF\n"), "{text}");
    let sample = |family: &str, labels: Value| -> f64 {
        sample(&families, family, labels.clone())
            .unwrap_or_else(|| panic!("{family} {labels}: {:#}", families[family]))
    };
    assert_eq!(families["parvm_partitions"]["type"], "gauge");
    assert_eq!(sample("parvm_partitions", json!({"state": "running"})), 1.0);
    assert_eq!(
        sample("parvm_partition_vcpus", json!({"partition": "m"})),
        1.0
    );
    assert_eq!(
        sample("parvm_partition_memory_bytes", json!({"partition": "m"})),
        16.0 * 1048576.0
    );
    assert!(sample("parvm_vmm_cpu_seconds", json!({"partition": "m"})) >= 0.0);
    // The hang guest spins: its one vCPU thread runs (clock ticks of
    // 10 ms: scraped again until one has passed).
    let vcpu0 = json!({"partition": "m", "vcpu": "0"});
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::sample(&scrape(&env).1, "parvm_vcpu_seconds", vcpu0.clone()).unwrap_or(0.0) == 0.0
    {
        assert!(Instant::now() < deadline, "the vCPU thread never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(families["parvm_api_requests"]["type"], "counter");
    let route = "/v1/partitions/{name}";
    assert_eq!(
        sample(
            "parvm_api_requests",
            json!({"route": route, "code": "200", "method": "GET"})
        ),
        3.0
    );
    assert_eq!(
        sample("parvm_api_requests", json!({"route": route, "code": "404"})),
        1.0
    );
    assert!(sample("parvm_events", json!({"kind": "state"})) >= 2.0);
    assert_eq!(
        families["parvm_api_request_duration_seconds"]["type"],
        "histogram"
    );
    env.ok(&["stop", "m"]);
}

#[test]
fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = parvm_tests::scratch_dir("pm-api-token");
    let token = "parvm-test-token-0123456789";
    std::fs::write(dir.join("token"), token).unwrap();
    let addr = format!("127.0.0.1:{port}");
    let env = Env::with(
        "api-schemathesis",
        common::vmm_binary(),
        &[
            "--api-listen",
            &addr,
            "--api-token-file",
            dir.join("token").to_str().unwrap(),
        ],
    );
    // Something to find: a defined and a running partition.
    env.ok(&["define", &env.hang_definition("idle", "never")]);
    env.ok(&["define", &env.hang_definition("busy", "never")]);
    env.ok(&["start", "busy"]);
    let base = format!("http://{addr}");
    // The token is required on the TCP port.
    let unauth = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/v1/partitions"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&unauth.stdout), "401");
    let out = Command::new(pyenv().join("schemathesis"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance",
            "--max-examples",
            "30",
            "--seed",
            "19",
            "--workers",
            "1",
            "--request-timeout",
            "30",
            "--phases",
            "examples,coverage,fuzzing",
            "--suppress-health-check",
            "all",
        ])
        .env("SCHEMATHESIS_HOOKS", "")
        // Its caches (.schemathesis/, .hypothesis/) go to the scratch
        // directory, not the source tree.
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{report}");
    // It ran every operation (a summary line like "25 passed").
    assert!(report.contains("passed"), "{report}");
    eprintln!("{report}");
    // It really talked to the manager: the busy partition still runs.
    assert_eq!(env.status("busy")["state"], "running");
    env.ok(&["stop", "busy"]);
}

/// A raw connection to the API socket.
fn raw(env: &Env) -> UnixStream {
    let s = UnixStream::connect(env.dir.join("api.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn answer(mut s: UnixStream) -> String {
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn broken_oversized_and_stalled_http_clients_do_not_disturb_others() {
    let env = Env::with(
        "api-hostile",
        common::vmm_binary(),
        &["--client-timeout", "2"],
    );
    // A stalled client: half a request, then nothing.
    let mut stalled = raw(&env);
    stalled
        .write_all(b"GET /v1/partitions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // Garbage, an oversized head and body, a chunked body: each answered
    // with a status and closed.
    let mut s = raw(&env);
    s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    assert!(answer(s).starts_with("HTTP/1.1 400 "));
    let mut s = raw(&env);
    let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 20000));
    let _ = s.write_all(&head);
    assert!(answer(s).starts_with("HTTP/1.1 431 "));
    let mut s = raw(&env);
    s.write_all(b"POST /v1/partitions HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n")
        .unwrap();
    assert!(answer(s).starts_with("HTTP/1.1 413 "));
    let mut s = raw(&env);
    s.write_all(b"POST /v1/partitions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    assert!(answer(s).starts_with("HTTP/1.1 411 "));
    let mut s = raw(&env);
    s.write_all(
        b"POST /v1/partitions HTTP/1.1\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{\"a\":",
    )
    .unwrap();
    let a = answer(s);
    assert!(a.starts_with("HTTP/1.1 400 "), "{a}");
    assert!(a.contains("\"kind\":\"bad_request\""), "{a}");
    // Meanwhile others are served at once.
    let started = Instant::now();
    for _ in 0..5 {
        curl_json(&env, "GET", "/v1/partitions", None, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Two requests on one connection (keep-alive), then close.
    let mut s = raw(&env);
    s.write_all(
        b"GET /v1/partitions HTTP/1.1\r\n\r\nGET /v1/pool HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let a = answer(s);
    assert_eq!(a.matches("HTTP/1.1 ").count(), 2, "{a}");
    // The stalled one is cut at the client timeout with 408.
    let mut out = String::new();
    let t = Instant::now();
    let _ = stalled.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // The manager lives on.
    curl_json(&env, "GET", "/v1/partitions", None, 200);
}

#[test]
fn the_api_socket_is_private_and_other_uids_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = Env::new("api-perm");
    let sock = env.dir.join("api.sock");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot connect as another uid; skipping the rest");
        return;
    }
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(&sock)
        .arg("http://localhost/v1/partitions")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n403"), "{text}");
    assert!(
        text.contains("uid 65534 may not use this partition manager"),
        "{text}"
    );
}
