//! `parctl events`: the manager's events after `--since`, as they happen
//! (long polls of `Request::Events`), one line each or one JSON object a
//! line; events the manager's ring dropped are said, never skipped
//! silently.

use partition_manager::client::{Client, ClientError};
use partition_manager::protocol::{Event, Request, Response};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// How long one poll waits for an event.
const POLL: Duration = Duration::from_secs(10);

fn clock(time_ms: u64) -> String {
    let secs = time_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        time_ms % 1000
    )
}

fn line(e: &Event, json: bool) -> String {
    match json {
        true => serde_json::to_string(e).unwrap_or_default(),
        false => format!("{} {e}", clock(e.time_ms)),
    }
}

pub fn events(
    socket: &Path,
    timeout: Option<Duration>,
    mut since: u64,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let wait = if follow { POLL } else { Duration::ZERO };
    let answer_within = timeout.unwrap_or(Duration::from_secs(5)) + wait;
    let client = Client::connect_within(socket, Some(answer_within))?;
    let mut out = std::io::stdout().lock();
    loop {
        let request = Request::Events {
            since,
            wait_ms: wait.as_millis() as u64,
        };
        let batch = match client.call(&request)?.0 {
            Response::Events(batch) => batch,
            other => return Err(ClientError::Unexpected(format!("{other:?}")).into()),
        };
        let mut text = String::new();
        if batch.lost > 0 {
            if json {
                text.push_str(&format!("{{\"lost\":{}}}\n", batch.lost));
            } else {
                eprintln!(
                    "parctl: {} event(s) after #{since} were lost (the manager keeps only the newest)",
                    batch.lost
                );
            }
        }
        for e in &batch.events {
            text.push_str(&line(e, json));
            text.push('\n');
        }
        // A reader that went away (`| head`) ends the command quietly.
        if out
            .write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .is_err()
        {
            return Ok(());
        }
        since = batch.next;
        if !follow {
            return Ok(());
        }
    }
}
