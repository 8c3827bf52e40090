//! The client side of the listening socket, used by `parctl`, the
//! benchmark and the tests: connect, send one [`Request`], read its
//! [`Response`] (with any file descriptor beside it).

use parvm_protocol::{Channel, ErrorKind, ProtocolError, Request, Response};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the partition manager at {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition manager at {path}: {source}")]
    Protocol {
        path: PathBuf,
        source: ProtocolError,
    },
    /// The manager answered with an error.
    #[error("{message}")]
    Manager { kind: ErrorKind, message: String },
    #[error("unexpected answer from the partition manager: {0}")]
    Unexpected(String),
    /// The manager accepted the connection but did not answer in time.
    #[error("the partition manager at {path} did not answer within {secs} s (is it stopped or overloaded? --timeout sets the wait)")]
    Timeout { path: PathBuf, secs: f64 },
}

/// `parctl`'s exit status when the manager could not be reached.
pub const EXIT_UNREACHABLE: i32 = 3;
/// `parctl`'s exit status when the manager did not answer in time.
pub const EXIT_TIMEOUT: i32 = 4;
/// `parctl`'s exit status when the peer broke the protocol.
pub const EXIT_PROTOCOL: i32 = 5;

/// `parctl`'s exit status for an error answer of `kind`: 10 and up, in
/// the order of [`ErrorKind::ALL`] (docs/manager.md, "Exit status").
pub fn exit_code(kind: ErrorKind) -> i32 {
    10 + ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0) as i32
}

impl ClientError {
    /// The kind `parctl --json` reports: the manager's error kind, or
    /// `unreachable`, `timeout`, `protocol` for failures on the way.
    pub fn kind_name(&self) -> &'static str {
        match self {
            ClientError::Manager { kind, .. } => kind.as_str(),
            ClientError::Connect { .. } => "unreachable",
            ClientError::Timeout { .. } => "timeout",
            ClientError::Protocol { .. } | ClientError::Unexpected(_) => "protocol",
        }
    }

    /// `parctl`'s exit status for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Manager { kind, .. } => exit_code(*kind),
            ClientError::Connect { .. } => EXIT_UNREACHABLE,
            ClientError::Timeout { .. } => EXIT_TIMEOUT,
            ClientError::Protocol { .. } | ClientError::Unexpected(_) => EXIT_PROTOCOL,
        }
    }
}

/// A connection to the partition manager.
pub struct Client {
    chan: Channel,
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client {
            chan: Channel::new(stream),
            path: path.to_path_buf(),
            timeout: None,
        })
    }

    /// As [`Self::connect`], with every answer due within `timeout`
    /// ([`ClientError::Timeout`] otherwise); `None` waits for ever.
    pub fn connect_within(path: &Path, timeout: Option<Duration>) -> Result<Self, ClientError> {
        let mut client = Self::connect(path)?;
        client.set_timeout(timeout);
        Ok(client)
    }

    /// How long an answer may take from now on (`None`: for ever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        let stream = self.chan.stream();
        let _ = stream.set_read_timeout(timeout);
        let _ = stream.set_write_timeout(timeout);
        self.timeout = timeout;
    }

    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    fn protocol(&self, source: ProtocolError) -> ClientError {
        match (source, self.timeout) {
            (ProtocolError::Timeout, Some(t)) => ClientError::Timeout {
                path: self.path.clone(),
                secs: t.as_secs_f64(),
            },
            (source, _) => ClientError::Protocol {
                path: self.path.clone(),
                source,
            },
        }
    }

    /// Sends `request` and returns the answer; an error answer becomes
    /// [`ClientError::Manager`].
    pub fn call(&self, request: &Request) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        if let Err(e) = self.chan.send(request, &[]) {
            // A manager that refused the connection (`busy`) has answered
            // and closed before the request went out: show its answer.
            return match self.receive() {
                Err(answer @ ClientError::Manager { .. }) => Err(answer),
                _ => Err(self.protocol(e)),
            };
        }
        self.receive()
    }

    /// Reads one answer.
    pub fn receive(&self) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        match self.chan.recv::<Response>() {
            Ok((Response::Error { kind, message }, _)) => {
                Err(ClientError::Manager { kind, message })
            }
            Ok(answer) => Ok(answer),
            Err(e) => Err(self.protocol(e)),
        }
    }
}
