#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The hcall page with the real `vmm` binary and this test as its partition
//! manager: the test holds the other end of the control socketpair, so it
//! decides when (and what) an hcall answers.
//!
//! A slow hcall holds only the vCPU that made it: with the tiny guest's
//! `parvm.grant=hcall-smp` role, vCPU 0 issues a GRANT that the test answers
//! only after vCPU 1 has been seen running and reading the hcall page
//! meanwhile.

use parvm_protocol::{Channel, GrantCookie, Hcall, HcallOutcome, ManagerToVmm, Rights, ToManager};
use parvm_tests::guests::guest_path;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: the machine running the tests may be loaded.
const DEADLINE: Duration = Duration::from_secs(90);
/// How long the test keeps the hcall unanswered at least.
const HOLD: Duration = Duration::from_secs(1);
/// Ticks vCPU 1 must print while the call is outstanding.
const TICKS: u64 = 3;

fn tick_number(line: &str) -> Option<u64> {
    line.strip_prefix("parvm-guest: grant hcall smp tick ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_slow_hcall_holds_only_its_own_vcpu() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    // The child inherits `theirs` at the same number (std opens sockets
    // close-on-exec). This file has one test, so no other child of this
    // process inherits it by accident.
    // SAFETY: F_SETFD on a descriptor this test owns.
    let rc = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFD, 0) };
    assert_eq!(rc, 0);
    let kernel = guest_path("tiny.elf");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(["--name", "smp", "--vcpus", "2", "--memory-mib", "32"])
        .arg("--kernel")
        .arg(&kernel)
        .args(["--cmdline", "console=ttyS0 parvm.grant=hcall-smp"])
        .arg("--control-fd")
        .arg(theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);

    // Console lines as they come, with everything kept for the messages.
    let (line_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut console = Vec::<String>::new();

    // Play the manager: read the VMM's messages on a thread, wait for the
    // guest's call.
    let chan = Channel::new(ours);
    let manager = chan.try_clone().unwrap();
    let (msg_tx, messages) = mpsc::channel::<ToManager>();
    std::thread::spawn(move || {
        while let Ok((msg, _)) = chan.recv::<ToManager>() {
            if msg_tx.send(msg).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let (seq, call) = loop {
        console.extend(lines.try_iter());
        match messages.recv_timeout(Duration::from_millis(100)) {
            Ok(ToManager::Hcall { seq, call }) => break (seq, call),
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < DEADLINE => {}
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "no hcall from the guest ({e}); console:\n{}\nstderr:\n{}",
                    console.join("\n"),
                    stderr.join().unwrap()
                );
            }
        }
    };
    let called = Instant::now();
    assert_eq!(
        call,
        Hcall::Grant {
            segment: 0,
            grantee: "peer".into(),
            rights: Rights::Rw
        }
    );

    // Hold the answer until vCPU 1 has printed TICKS more ticks (each after
    // reading the hcall page) than it had when the call arrived.
    console.extend(lines.try_iter());
    let seen = |console: &[String]| console.iter().filter_map(|l| tick_number(l)).max();
    let at_call = seen(&console).unwrap_or(0);
    loop {
        let now = seen(&console).unwrap_or(0);
        if now >= at_call + TICKS && called.elapsed() >= HOLD {
            break;
        }
        if called.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!(
                "vCPU 1 made no progress while vCPU 0's hcall was outstanding \
                 ({now} ticks, {at_call} at the call); console:\n{}",
                console.join("\n")
            );
        }
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            console.push(line);
        }
    }
    let held = called.elapsed();
    let mut cookie = GrantCookie([0; 16]);
    cookie.0[0] = 0x5a;
    manager
        .send(
            &ManagerToVmm::HcallDone {
                seq,
                outcome: HcallOutcome {
                    status: 0,
                    result0: 4660,
                    result1: 0,
                    cookie: Some(cookie),
                },
            },
            &[],
        )
        .unwrap();

    // The call completes with the answer, and the guest powers off.
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if called.elapsed() > held + DEADLINE {
            let _ = child.kill();
            panic!("the guest did not finish; console:\n{}", console.join("\n"));
        }
        console.extend(lines.try_iter());
        std::thread::sleep(Duration::from_millis(20));
    };
    // The reader thread ends with the pipe.
    console.extend(lines.iter());
    let out = console.join("\n");
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(0), "console:\n{out}\nstderr:\n{stderr}");
    let pos = |want: &str| console.iter().position(|l| l.starts_with(want));
    let calling = pos("parvm-guest: grant hcall smp calling").expect(&out);
    let done = pos("parvm-guest: grant hcall smp status=").expect(&out);
    assert!(calling < done, "{out}");
    let ticks: Vec<&String> = console[calling..done]
        .iter()
        .filter(|l| tick_number(l).is_some())
        .collect();
    assert!(ticks.len() as u64 >= TICKS, "{out}");
    assert!(
        ticks.iter().all(|l| l.ends_with(" magic=ok")),
        "vCPU 1 read a wrong MAGIC: {out}"
    );
    let line = &console[done];
    assert!(
        line.starts_with("parvm-guest: grant hcall smp status=0 result0=4660 ticks="),
        "{out}"
    );
    let during: u64 = line.rsplit('=').next().unwrap().parse().unwrap();
    assert!(during >= TICKS, "{out}");
    assert!(
        pos("parvm-guest: poweroff").is_some_and(|p| p > done),
        "{out}"
    );
    eprintln!(
        "hcall held {held:?}; vCPU 1 ticked {during} times meanwhile; {:?} in all",
        start.elapsed()
    );
}
