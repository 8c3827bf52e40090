//! The client side of the listening socket, used by `parctl`, the
//! benchmark and the tests: connect, send one [`Request`], read its
//! [`Response`] (with any file descriptor beside it).

use parvm_protocol::{Channel, ErrorKind, ProtocolError, Request, Response};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

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
}

/// A connection to the partition manager.
pub struct Client {
    chan: Channel,
    path: PathBuf,
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
        })
    }

    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    fn protocol(&self, source: ProtocolError) -> ClientError {
        ClientError::Protocol {
            path: self.path.clone(),
            source,
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
