//! The mechanism on a made-up role set: lists merge, filters kill only
//! the child that breaks them, and the registry stays empty unconfigured.
#![allow(clippy::unwrap_used)]

use crate::test_support::{child_calls, killed_by_sigsys};
use crate::{apply, build, rust_runtime, syscalls, thread_spawning, Allow, Role, SeccompMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Test {
    Plain,
    Spawner,
}

impl Role for Test {
    const ALL: &'static [Test] = &[Test::Plain, Test::Spawner];
    fn name(self) -> &'static str {
        match self {
            Test::Plain => "plain",
            Test::Spawner => "spawner",
        }
    }
    fn allowed(self) -> Vec<Allow> {
        let mut list = rust_runtime();
        if self == Test::Spawner {
            list.extend(thread_spawning());
            list.push(Allow::Any(libc::SYS_fcntl));
            list.push(Allow::ArgIn(libc::SYS_prctl, 0, vec![1]));
        }
        list
    }
}

#[test]
fn modes_parse() {
    assert_eq!("kill".parse(), Ok(SeccompMode::Kill));
    assert_eq!("log".parse(), Ok(SeccompMode::Log));
    assert_eq!("none".parse(), Ok(SeccompMode::None));
    assert!("off".parse::<SeccompMode>().is_err());
    assert_eq!(SeccompMode::default(), SeccompMode::Kill);
}

#[test]
fn syscalls_are_distinct_and_sorted() {
    let plain = syscalls(Test::Plain);
    assert_eq!(plain.len(), rust_runtime().len());
    assert!(plain.windows(2).all(|w| w[0] < w[1]));
    let spawner = syscalls(Test::Spawner);
    assert_eq!(spawner.len(), plain.len() + thread_spawning().len());
    assert!(!plain.contains(&libc::SYS_clone));
    assert!(build(Test::Plain, SeccompMode::None).unwrap().is_none());
}

#[test]
fn a_filter_kills_only_the_child_that_breaks_it() {
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0];
    for &role in Test::ALL {
        let status = child_calls(role, SeccompMode::Kill, libc::SYS_socket, inet);
        assert!(killed_by_sigsys(status), "{}: {status:#x}", role.name());
        let status = child_calls(role, SeccompMode::Kill, libc::SYS_getpid, [0; 3]);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let status = child_calls(role, SeccompMode::Log, libc::SYS_socket, inet);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    // An argument check: prctl only with the listed options.
    let status = child_calls(Test::Spawner, SeccompMode::Kill, libc::SYS_prctl, [2, 0, 0]);
    assert!(killed_by_sigsys(status), "{status:#x}");
    // Unconfigured, apply installs nothing: this process still may.
    apply(Test::Plain);
    // SAFETY: a plain socket call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    assert!(fd >= 0);
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
}
