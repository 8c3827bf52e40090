//! `parctl console`: the console log followed, stdin forwarded to the
//! guest until the partition stops or Ctrl-] detaches.

use anyhow::{anyhow, bail, Context};
use partition_manager::client::Client;
use partition_manager::protocol::{Request, Response};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::time::Duration;
use vmm_sys_util::terminal::Terminal;

/// Follows the console log and forwards stdin until the partition stops,
/// stdin asks to detach (Ctrl-] on a terminal), or the manager goes away.
pub fn console(client: &Client, mut log: File, name: &str) -> anyhow::Result<()> {
    const DETACH: u8 = 0x1d; // Ctrl-]
    let len = log.seek(SeekFrom::End(0))?;
    log.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
    let stdin = std::io::stdin();
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(stdin.as_raw_fd()) } == 1;
    let _raw = if tty {
        eprintln!("parctl: attached to {name}'s console; Ctrl-] detaches");
        Some(RawMode::enter()?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 4096];
    let drain = |log: &mut File, out: &mut std::io::StdoutLock<'_>| -> std::io::Result<()> {
        // The manager rotated the log (emptied it): follow from its start.
        if log.metadata()?.len() < log.stream_position()? {
            log.seek(SeekFrom::Start(0))?;
        }
        std::io::copy(log, out)?;
        out.flush()
    };
    loop {
        drain(&mut log, &mut out)?;
        let mut fds = vec![libc::pollfd {
            fd: client.channel().stream().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if stdin_open {
            fds.push(libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        if fds[0].revents != 0 {
            // The manager speaks only to end the session (or on error).
            let ended = client.receive();
            std::thread::sleep(Duration::from_millis(20));
            drain(&mut log, &mut out)?;
            return match ended {
                Ok((Response::ConsoleEnded { reason }, _)) => {
                    eprintln!("parctl: {name} stopped: {reason}");
                    Ok(())
                }
                Ok((other, _)) => bail!("unexpected answer from the partition manager: {other:?}"),
                Err(e) => Err(e.into()),
            };
        }
        if stdin_open && fds.get(1).is_some_and(|f| f.revents != 0) {
            let got = std::io::stdin().lock().read(&mut buf)?;
            if got == 0 {
                stdin_open = false;
                continue;
            }
            let data = &buf[..got];
            let (data, detach) = match data.iter().position(|&b| b == DETACH && tty) {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if !data.is_empty() {
                client
                    .channel()
                    .send(
                        &Request::ConsoleInput {
                            data: data.to_vec(),
                        },
                        &[],
                    )
                    .context("cannot send console input")?;
            }
            if detach {
                eprintln!("\r\nparctl: detached from {name}");
                return Ok(());
            }
        }
    }
}

/// The terminal in raw mode until dropped.
struct RawMode;

impl RawMode {
    fn enter() -> anyhow::Result<Self> {
        std::io::stdin()
            .lock()
            .set_raw_mode()
            .map_err(|e| anyhow!("cannot put the terminal in raw mode: {e}"))?;
        Ok(RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}
