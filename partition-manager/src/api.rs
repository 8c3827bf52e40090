//! The HTTP API: the operator requests of the native protocol as REST
//! resources under `/v1/`, an event stream, `/metrics` and the OpenAPI
//! document, served on a Unix socket (mode 0600, `SO_PEERCRED`: the
//! manager's uid and root, as on the native socket) and optionally on a
//! loopback TCP port with a bearer token. See docs/api.md.
//!
//! Module map:
//! - [`http`]: one connection's HTTP/1.1 (requests parsed by `httparse`
//!   within bounds and a deadline; responses).
//! - [`routes`]: the resources, each turned into a [`crate::protocol::Request`]
//!   carried out by [`crate::daemon::handle`] (the native socket's code).
//! - [`openapi`]: the OpenAPI 3 document derived from `routes` and the wire
//!   types (utoipa), served at `/openapi.json`.
//! - [`metrics`]: `/metrics` from the manager's state, its event counts and
//!   the API's own request counts (prometheus-client).
//! - this file: listeners, who may connect, one thread per connection
//!   within [`Limits`], routing, the server-sent event stream.

pub mod http;
pub mod metrics;
pub mod openapi;
pub mod routes;

use crate::daemon::{DaemonError, Limits};
use crate::manager::Manager;
use crate::process::{constant_time_eq, spawn_thread};
use crate::ratelimit::LogLimiter;
use http::{read_request, write_response, Conn, HttpRequest, ReadError};
use parvm_protocol::managed::{euid, peer_allowed, peer_cred};
use parvm_protocol::ErrorKind;
use routes::{error, segment, Reply};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connection events logged per second at most.
static CONNECT_LOG: LogLimiter = LogLimiter::new(20, Duration::from_secs(1));

/// How often an idle event stream sends a keep-alive comment (and finds
/// out whether its client is still there).
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The API server: shared by its listeners' threads.
pub struct Api {
    mgr: Arc<Manager>,
    limits: Limits,
    /// The bearer token the TCP listener asks for.
    token: Option<String>,
    active: AtomicUsize,
    metrics: metrics::ApiMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Listen(#[from] DaemonError),
    #[error("--api-listen {0}: only loopback addresses (127.0.0.0/8, ::1) are served")]
    NotLoopback(SocketAddr),
    #[error("--api-listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--api-listen needs a token (--api-token-file)")]
    NoToken,
}

impl Api {
    pub fn new(mgr: Arc<Manager>, limits: Limits, token: Option<String>) -> Arc<Self> {
        Arc::new(Api {
            mgr,
            limits,
            token,
            active: AtomicUsize::new(0),
            metrics: metrics::ApiMetrics::default(),
        })
    }

    /// Serves `listener` (the API's Unix socket) on a thread of its own.
    pub fn serve_unix(self: &Arc<Self>, listener: UnixListener) {
        let api = self.clone();
        spawn_thread("api-unix", move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let cred = match peer_cred(&stream) {
                            Ok(c) => c,
                            Err(e) => {
                                tracing::warn!(error = %e, "API: cannot read peer credentials; closing");
                                continue;
                            }
                        };
                        let allowed = peer_allowed(cred.uid, euid());
                        api.connection(Conn::Unix(stream), allowed.then_some(()).ok_or(cred.uid));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "API: accept failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        });
    }

    /// Serves `listener` (a loopback TCP port) on a thread of its own.
    pub fn serve_tcp(self: &Arc<Self>, listener: TcpListener) {
        let api = self.clone();
        spawn_thread("api-tcp", move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(stream) => {
                        let _ = stream.set_nodelay(true);
                        api.connection(Conn::Tcp(stream), Ok(()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "API: accept failed");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        });
    }

    /// A new connection: a thread of its own within `max_clients`, else
    /// `503` at once. `peer` is the refused uid of a Unix peer.
    fn connection(self: &Arc<Self>, mut conn: Conn, peer: Result<(), u32>) {
        let _ = conn.set_write_timeout(Some(Duration::from_millis(500)));
        let n = self.active.fetch_add(1, Ordering::AcqRel);
        if n >= self.limits.max_clients {
            self.active.fetch_sub(1, Ordering::AcqRel);
            let max = self.limits.max_clients;
            self.refuse(
                &mut conn,
                ErrorKind::Busy,
                &format!(
                    "the partition manager serves {max} API clients at once already; try again"
                ),
            );
            conn.finish_now();
            return;
        }
        let api = self.clone();
        spawn_thread("api-client", move || {
            match peer {
                Ok(()) => api.serve_connection(conn),
                Err(uid) => {
                    // Answered on its own thread (counted like a client):
                    // the answer waits for the request to be read away.
                    if let Some(suppressed) = CONNECT_LOG.allow() {
                        tracing::warn!(uid, suppressed, "API connection refused: uid not allowed");
                    }
                    let message = format!(
                        "uid {uid} may not use this partition manager (only uid {} and root)",
                        euid()
                    );
                    api.refuse(&mut conn, ErrorKind::PermissionDenied, &message);
                    conn.finish();
                }
            }
            api.active.fetch_sub(1, Ordering::AcqRel);
        });
    }

    fn refuse(&self, conn: &mut Conn, kind: ErrorKind, message: &str) {
        if let Reply::Json(status, v) = error(kind, message) {
            let sent = write_response(
                conn,
                status,
                "application/json",
                &[],
                v.to_string().as_bytes(),
                true,
            );
            if sent.is_err() {
                tracing::debug!("API: the refusal could not be sent");
            }
        }
    }

    /// Requests on one connection until it closes, errs or idles past the
    /// client timeout.
    fn serve_connection(&self, mut conn: Conn) {
        let _ = conn.set_write_timeout(Some(self.limits.client_timeout));
        let mut buf = Vec::new();
        loop {
            let deadline = Instant::now() + self.limits.client_timeout;
            let req = match read_request(&mut conn, &mut buf, deadline) {
                Ok(r) => r,
                Err(ReadError::Closed) | Err(ReadError::Io(_)) => return,
                Err(ReadError::Timeout) => {
                    // Said only to a client that started a request.
                    if !buf.is_empty() {
                        let reply = error(
                            ErrorKind::BadRequest,
                            "no whole request within the client timeout",
                        );
                        self.send(&mut conn, "-", "-", reply, true, 408);
                    }
                    return;
                }
                Err(ReadError::Refused { status, message }) => {
                    tracing::debug!(status, %message, "API request refused");
                    self.send(
                        &mut conn,
                        "-",
                        "-",
                        error(ErrorKind::BadRequest, message),
                        true,
                        status,
                    );
                    return;
                }
            };
            let started = Instant::now();
            if let Some(reply) = self.unauthorized(&req) {
                self.send(&mut conn, &req.method, "-", reply, true, 401);
                return;
            }
            let (route, reply) = self.route(&req);
            if let Reply::Events { since } = reply {
                self.metrics
                    .count(&req.method, route, 200, started.elapsed());
                self.stream_events(&mut conn, since);
                return;
            }
            let ok = self.send(&mut conn, &req.method, route, reply, req.close, 0);
            self.metrics.observe(route, started.elapsed());
            if !ok || req.close {
                return;
            }
        }
    }

    /// Writes `reply` (with `status` instead of its own, unless 0);
    /// whether the connection is still usable.
    fn send(
        &self,
        conn: &mut Conn,
        method: &str,
        route: &'static str,
        reply: Reply,
        close: bool,
        status: u16,
    ) -> bool {
        let (own, ct, body) = match reply {
            Reply::Json(s, v) => (s, "application/json", v.to_string().into_bytes()),
            Reply::Body(s, ct, b) => (s, ct, b),
            Reply::Events { .. } => (500, "application/json", Vec::new()),
        };
        let status = if status == 0 { own } else { status };
        self.metrics.count(method, route, status, Duration::ZERO);
        let extra: Vec<(&str, String)> = match status {
            401 => vec![("WWW-Authenticate", "Bearer".into())],
            405 => vec![("Allow", allowed_methods(route).into())],
            _ => Vec::new(),
        };
        let sent = write_response(conn, status, ct, &extra, &body, close).is_ok();
        if sent && close {
            conn.finish();
        }
        sent
    }

    /// On the TCP listener: the bearer token, compared in constant time.
    fn unauthorized(&self, req: &HttpRequest) -> Option<Reply> {
        let token = self.token.as_deref()?;
        let given = req
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => None,
            _ => Some(error(
                ErrorKind::PermissionDenied,
                "missing or wrong bearer token (Authorization: Bearer TOKEN, from --api-token-file)",
            )),
        }
    }

    /// The handler of `req` and the route template it matched (for
    /// metrics).
    fn route(&self, req: &HttpRequest) -> (&'static str, Reply) {
        let mgr = &self.mgr;
        let parts: Vec<&str> = req.path[1..].split('/').collect();
        let m = req.method.as_str();
        let name = |raw: &str| segment(raw);
        macro_rules! named {
            ($raw:expr, $f:expr) => {
                match name($raw) {
                    Ok(n) => $f(n),
                    Err(reply) => reply,
                }
            };
        }
        let not_allowed = |route: &'static str| {
            (
                route,
                error(
                    ErrorKind::BadRequest,
                    format!("{m} is not allowed here ({})", allowed_methods(route)),
                ),
            )
        };
        let with405 = |(route, reply): (&'static str, Reply)| match reply {
            Reply::Json(400, v) => (route, Reply::Json(405, v)),
            other => (route, other),
        };
        match (m, parts.as_slice()) {
            ("GET", ["v1", "partitions"]) => ("/v1/partitions", routes::list_partitions(mgr, req)),
            ("POST", ["v1", "partitions"]) => ("/v1/partitions", routes::define(mgr, req)),
            (_, ["v1", "partitions"]) => with405(not_allowed("/v1/partitions")),
            ("GET", ["v1", "partitions", n]) => (
                "/v1/partitions/{name}",
                named!(n, |n| routes::status(mgr, n)),
            ),
            ("DELETE", ["v1", "partitions", n]) => (
                "/v1/partitions/{name}",
                named!(n, |n| routes::undefine(mgr, n)),
            ),
            (_, ["v1", "partitions", _]) => with405(not_allowed("/v1/partitions/{name}")),
            ("GET", ["v1", "partitions", n, "definition"]) => (
                "/v1/partitions/{name}/definition",
                named!(n, |n| routes::show(mgr, n)),
            ),
            ("PATCH", ["v1", "partitions", n, "definition"]) => (
                "/v1/partitions/{name}/definition",
                named!(n, |n| routes::update(mgr, n, req)),
            ),
            (_, ["v1", "partitions", _, "definition"]) => {
                with405(not_allowed("/v1/partitions/{name}/definition"))
            }
            ("GET", ["v1", "partitions", n, "console"]) => (
                "/v1/partitions/{name}/console",
                named!(n, |n| routes::console(mgr, n)),
            ),
            ("PATCH", ["v1", "partitions", n, "cpu"]) => (
                "/v1/partitions/{name}/cpu",
                named!(n, |n| routes::set_cpu(mgr, n, req)),
            ),
            (_, ["v1", "partitions", _, "cpu"]) => {
                with405(not_allowed("/v1/partitions/{name}/cpu"))
            }
            (_, ["v1", "partitions", _, "console"]) => {
                with405(not_allowed("/v1/partitions/{name}/console"))
            }
            ("POST", ["v1", "partitions", n, a]) => (
                "/v1/partitions/{name}/{action}",
                named!(n, |n| match segment(a) {
                    Ok(a) => routes::action(mgr, n, &a),
                    Err(reply) => reply,
                }),
            ),
            (_, ["v1", "partitions", _, _]) => {
                with405(not_allowed("/v1/partitions/{name}/{action}"))
            }
            ("GET", ["v1", "policy"]) => ("/v1/policy", routes::policy_show(mgr)),
            ("PUT", ["v1", "policy"]) => ("/v1/policy", routes::policy_set(mgr, req)),
            (_, ["v1", "policy"]) => with405(not_allowed("/v1/policy")),
            ("GET", ["v1", "vios"]) => ("/v1/vios", routes::list_vios(mgr)),
            (_, ["v1", "vios"]) => with405(not_allowed("/v1/vios")),
            ("GET", ["v1", "segments"]) => ("/v1/segments", routes::segments(mgr)),
            ("POST", ["v1", "segments"]) => ("/v1/segments", routes::segment_create(mgr, req)),
            (_, ["v1", "segments"]) => with405(not_allowed("/v1/segments")),
            ("GET", ["v1", "grants"]) => ("/v1/grants", routes::grants(mgr)),
            ("POST", ["v1", "grants"]) => ("/v1/grants", routes::grant(mgr, req)),
            (_, ["v1", "grants"]) => with405(not_allowed("/v1/grants")),
            ("POST", ["v1", "grants", "accept"]) => ("/v1/grants/accept", routes::accept(mgr, req)),
            ("POST", ["v1", "grants", "regrant"]) => {
                ("/v1/grants/regrant", routes::regrant(mgr, req))
            }
            ("POST", ["v1", "grants", "revoke"]) => ("/v1/grants/revoke", routes::revoke(mgr, req)),
            (_, ["v1", "grants", "accept"]) => with405(not_allowed("/v1/grants/accept")),
            (_, ["v1", "grants", "regrant"]) => with405(not_allowed("/v1/grants/regrant")),
            (_, ["v1", "grants", "revoke"]) => with405(not_allowed("/v1/grants/revoke")),
            ("POST", ["v1", "copy"]) => ("/v1/copy", routes::copy(mgr, req)),
            (_, ["v1", "copy"]) => with405(not_allowed("/v1/copy")),
            ("POST", ["v1", "share"]) => ("/v1/share", routes::share(mgr, req)),
            (_, ["v1", "share"]) => with405(not_allowed("/v1/share")),
            ("GET", ["v1", "pool"]) => ("/v1/pool", routes::pool_show(mgr)),
            ("POST", ["v1", "pool"]) => ("/v1/pool", routes::pool_create(mgr, req)),
            ("PATCH", ["v1", "pool"]) => ("/v1/pool", routes::pool_resize(mgr, req)),
            (_, ["v1", "pool"]) => with405(not_allowed("/v1/pool")),
            ("POST", ["v1", "pool", "paging"]) => {
                ("/v1/pool/paging", routes::pool_add_paging(mgr, req))
            }
            (_, ["v1", "pool", "paging"]) => with405(not_allowed("/v1/pool/paging")),
            ("POST", ["v1", "pool", "paging", "remove"]) => (
                "/v1/pool/paging/remove",
                routes::pool_remove_paging(mgr, req),
            ),
            (_, ["v1", "pool", "paging", "remove"]) => {
                with405(not_allowed("/v1/pool/paging/remove"))
            }
            ("GET", ["v1", "events"]) => ("/v1/events", routes::events(mgr, req)),
            (_, ["v1", "events"]) => with405(not_allowed("/v1/events")),
            ("GET", ["metrics"]) => ("/metrics", self.metrics_reply()),
            (_, ["metrics"]) => with405(not_allowed("/metrics")),
            ("GET", ["openapi.json"]) => ("/openapi.json", openapi::reply()),
            (_, ["openapi.json"]) => with405(not_allowed("/openapi.json")),
            _ => (
                "-",
                error(
                    ErrorKind::NotFound,
                    format!("no resource {} (see /openapi.json)", req.path),
                ),
            ),
        }
    }

    fn metrics_reply(&self) -> Reply {
        match metrics::render(&self.mgr, &self.metrics) {
            Ok(text) => Reply::Body(200, metrics::CONTENT_TYPE, text.into_bytes()),
            Err(e) => error(
                ErrorKind::Internal,
                format!("cannot encode the metrics: {e}"),
            ),
        }
    }

    /// A server-sent event stream: `id: SEQ`, `event: TYPE`, `data: JSON`
    /// per event, an `event: lost` with the count when the ring dropped
    /// some, a comment every [`KEEPALIVE`] while idle; until the client
    /// goes or the manager stops.
    fn stream_events(&self, conn: &mut Conn, mut since: u64) {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n";
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        loop {
            let batch = self.mgr.events(since, KEEPALIVE);
            let mut out = String::new();
            if batch.lost > 0 {
                out.push_str(&format!(
                    "event: lost\ndata: {{\"lost\":{}}}\n\n",
                    batch.lost
                ));
            }
            for e in &batch.events {
                let data = serde_json::to_string(e).unwrap_or_default();
                out.push_str(&format!(
                    "id: {}\nevent: {}\ndata: {data}\n\n",
                    e.seq,
                    e.kind.name()
                ));
            }
            if out.is_empty() {
                if self.mgr.event_log().is_closed() {
                    return;
                }
                out.push_str(": keep-alive\n\n");
            }
            since = batch.next;
            if conn
                .write_all(out.as_bytes())
                .and_then(|_| conn.flush())
                .is_err()
            {
                return;
            }
        }
    }
}

/// The methods a route template answers, for `405`'s `Allow`.
fn allowed_methods(route: &str) -> &'static str {
    match route {
        "/v1/partitions" | "/v1/grants" | "/v1/segments" => "GET, POST",
        "/v1/partitions/{name}" => "GET, DELETE",
        "/v1/partitions/{name}/definition" => "GET, PATCH",
        "/v1/pool" => "GET, POST, PATCH",
        "/v1/policy" => "GET, PUT",
        "/v1/partitions/{name}/cpu" => "PATCH",
        "/v1/partitions/{name}/{action}"
        | "/v1/grants/accept"
        | "/v1/grants/regrant"
        | "/v1/grants/revoke"
        | "/v1/copy"
        | "/v1/share"
        | "/v1/pool/paging"
        | "/v1/pool/paging/remove" => "POST",
        _ => "GET",
    }
}

/// Binds the API's Unix socket (as the native one: mode 0600, its
/// directory 0700 when created).
pub fn listen_unix(path: &Path) -> Result<UnixListener, ApiError> {
    Ok(crate::daemon::listen(path, None)?)
}

/// Binds a loopback TCP port; anything else is refused.
pub fn listen_tcp(addr: SocketAddr) -> Result<TcpListener, ApiError> {
    if !addr.ip().is_loopback() {
        return Err(ApiError::NotLoopback(addr));
    }
    TcpListener::bind(addr).map_err(|source| ApiError::Bind { addr, source })
}
