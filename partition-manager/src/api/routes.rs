//! The REST resources: each handler turns an HTTP request into the same
//! [`Request`] `parctl` sends, has [`crate::daemon::handle`] carry it out
//! (one implementation behind both), and turns the [`Response`] into JSON
//! with an HTTP status ([`status_for`] maps the error kinds). The
//! `#[utoipa::path]` attributes here are the OpenAPI document's paths
//! (`super::openapi`).

use super::http::{percent_decode, HttpRequest};
use crate::daemon;
use crate::manager::Manager;
use parvm_config::{CpuMode, Definition, ProcUnits, RestartPolicy, SegmentSpec};
use parvm_protocol::{
    DoorbellInfo, ErrorKind, EventBatch, GrantCookie, GrantInfo, PagingDevice, PartitionStatus,
    Policy, PolicyMove, PoolInfo, Request, Response, Rights, SegmentInfo, SharedConfig,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use utoipa::ToSchema;

/// The console log bytes `GET .../console` answers with, at most (the end
/// of the log).
pub const MAX_CONSOLE: u64 = 1 << 20;

/// What a handler answers.
pub enum Reply {
    /// A JSON body.
    Json(u16, serde_json::Value),
    /// Another body (`text/plain`, the metrics text, ...).
    Body(u16, &'static str, Vec<u8>),
    /// A server-sent event stream from `since` on.
    Events { since: u64 },
}

/// `{"error": {"kind": ..., "message": ...}}`: every failure, with the
/// native protocol's error kind.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiError {
    pub error: ApiErrorBody,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiErrorBody {
    pub kind: ErrorKind,
    /// One line saying what was wrong.
    pub message: String,
}

/// The HTTP status of each error kind.
pub fn status_for(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::BadRequest | ErrorKind::VersionMismatch => 400,
        ErrorKind::PermissionDenied | ErrorKind::WrongPartition | ErrorKind::RightsEscalation => {
            403
        }
        ErrorKind::NotFound | ErrorKind::UnknownCookie => 404,
        ErrorKind::AlreadyExists
        | ErrorKind::InvalidState
        | ErrorKind::CookieUsed
        | ErrorKind::GpaConflict => 409,
        ErrorKind::StartFailed | ErrorKind::TooLarge => 422,
        ErrorKind::Internal => 500,
        ErrorKind::Busy => 503,
    }
}

pub fn error(kind: ErrorKind, message: impl Into<String>) -> Reply {
    error_with(status_for(kind), kind, message)
}

/// An error of `kind` answered with another `status` than its own.
pub fn error_with(status: u16, kind: ErrorKind, message: impl Into<String>) -> Reply {
    let body = ApiError {
        error: ApiErrorBody {
            kind,
            message: message.into(),
        },
    };
    Reply::Json(status, serde_json::to_value(body).unwrap_or_default())
}

fn json(status: u16, v: impl Serialize) -> Reply {
    match serde_json::to_value(v) {
        Ok(v) => Reply::Json(status, v),
        Err(e) => error(
            ErrorKind::Internal,
            format!("cannot encode the answer: {e}"),
        ),
    }
}

/// The answer to `request`, with `ok` as the status of a success.
fn call(mgr: &Arc<Manager>, request: Request, ok: u16) -> Reply {
    let (answer, _file) = daemon::handle(mgr, request);
    answer_of(answer, ok)
}

fn answer_of(answer: Response, ok: u16) -> Reply {
    use serde_json::json;
    match answer {
        Response::Error { kind, message } => error(kind, message),
        Response::Status { status } => json(ok, status),
        Response::List { partitions } => json(ok, json!({ "partitions": partitions })),
        Response::Undefined { name } => json(ok, json!({ "name": name })),
        Response::Segment { segment } => json(ok, segment),
        Response::Grant { grant } => json(ok, grant),
        Response::Revoked { revoked } => json(ok, json!({ "revoked": revoked })),
        Response::Copied { bytes } => json(ok, json!({ "bytes": bytes })),
        Response::Grants {
            segments,
            grants,
            doorbells,
        }
        | Response::Shared {
            segments,
            grants,
            doorbells,
        } => json(
            ok,
            GrantTable {
                segments,
                grants,
                doorbells,
            },
        ),
        Response::Pool { pool } => json(ok, pool),
        Response::Definition {
            name,
            definition,
            restart,
            segments,
        } => json(
            ok,
            StoredDefinition {
                name,
                definition,
                restart,
                segments,
            },
        ),
        Response::Events(batch) => json(ok, batch),
        Response::Policy { policy, moves } => json(ok, PolicyView { policy, moves }),
        other => error(ErrorKind::Internal, format!("unexpected answer {other:?}")),
    }
}

/// The JSON body the HTTP API answers `answer` with, which `parctl
/// --json` prints too (an error as `{"error": {"kind", "message"}}`).
pub fn answer_body(answer: Response) -> serde_json::Value {
    match answer_of(answer, 200) {
        Reply::Json(_, v) => v,
        _ => serde_json::Value::Null,
    }
}

/// A JSON request body of type `T`, or the reply saying what is wrong.
fn body<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, Reply> {
    // JSON, or what `curl -d` says when not told (its default type).
    if let Some(ct) = req.header("content-type") {
        let main = ct.split(';').next().unwrap_or("").trim();
        if !main.eq_ignore_ascii_case("application/json")
            && !main.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        {
            return Err(error_with(
                415,
                ErrorKind::BadRequest,
                format!("request body of type `{main}`: send application/json"),
            ));
        }
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        error(
            ErrorKind::BadRequest,
            format!(
                "request body: line {}, column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })
}

fn flag(req: &HttpRequest, key: &str) -> Result<bool, Reply> {
    match req.query(key) {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(v) => Err(error(
            ErrorKind::BadRequest,
            format!("query parameter `{key}`: `{v}` is not true or false"),
        )),
    }
}

fn number(req: &HttpRequest, key: &str, max: u64) -> Result<u64, Reply> {
    match req.query(key) {
        None => Ok(0),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(error(
                ErrorKind::BadRequest,
                format!("query parameter `{key}`: `{v}` is not a number from 0 to {max}"),
            )),
        },
    }
}

macro_rules! tryr {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reply) => return reply,
        }
    };
}

// ---- bodies -------------------------------------------------------------

/// `POST /v1/partitions`: what `parctl define FILE` sends.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineBody {
    /// A partition or VIOS definition (docs/manager.md): the JSON of
    /// `vmm --config`, absolute paths, without `restart` and `segments`.
    #[schema(value_type = Object)]
    pub definition: Definition,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub segments: Vec<SegmentSpec>,
}

/// `PATCH /v1/partitions/{name}/definition`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// A new definition of the same name (only while not active).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub definition: Option<Definition>,
    #[serde(default)]
    pub restart: Option<RestartPolicy>,
}

/// A stored definition, `GET /v1/partitions/{name}/definition`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredDefinition {
    pub name: String,
    #[schema(value_type = Object)]
    pub definition: Definition,
    pub restart: RestartPolicy,
    pub segments: Vec<SegmentSpec>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PartitionList {
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Undefined {
    pub name: String,
}

/// Segments, grants and doorbells (`parctl grants --json`).
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantTable {
    pub segments: Vec<SegmentInfo>,
    pub grants: Vec<GrantInfo>,
    pub doorbells: Vec<DoorbellInfo>,
}

/// `PATCH /v1/partitions/{name}/cpu`: what `parctl set NAME cpu.KEY=VALUE`
/// sends (docs/workload.md).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CpuBody {
    /// Processing units (1.0 is one core, two decimals).
    #[serde(default)]
    #[schema(value_type = Option<f64>)]
    pub entitled: Option<ProcUnits>,
    /// `capped` or `uncapped`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mode: Option<CpuMode>,
    #[serde(default)]
    pub weight: Option<u8>,
}

/// The workload policy and its last moves, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub policy: Policy,
    pub moves: Vec<PolicyMove>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SegmentList {
    pub segments: Vec<SegmentInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Revoked {
    pub revoked: Vec<GrantInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Copied {
    pub bytes: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SegmentBody {
    pub owner: String,
    pub id: String,
    /// Bytes: whole 4 KiB pages.
    pub size: u64,
    #[serde(default)]
    pub gpa: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// `OWNER/ID` of a segment or `VIOS/DISK` of a VIOS disk.
    pub segment: String,
    pub grantee: String,
    pub rights: Rights,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    #[schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$")]
    pub cookie: GrantCookie,
    pub partition: String,
    #[serde(default)]
    pub gpa: Option<u64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegrantBody {
    #[schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$")]
    pub cookie: GrantCookie,
    pub partition: String,
    pub grantee: String,
    pub rights: Rights,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    #[schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$")]
    pub cookie: GrantCookie,
    #[serde(default)]
    pub partition: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    pub partition: String,
    #[schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$")]
    pub src: GrantCookie,
    pub src_offset: u64,
    #[schema(value_type = String, pattern = "^pvg1-[0-9a-f]{32}$")]
    pub dst: GrantCookie,
    pub dst_offset: u64,
    pub len: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolCreateBody {
    pub size_mib: u64,
    /// `vios:VIOS/DISK` each.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub paging: Vec<PagingDevice>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolResizeBody {
    pub size_mib: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PagingBody {
    /// `vios:VIOS/DISK`.
    #[schema(value_type = String)]
    pub device: PagingDevice,
}

// ---- handlers -----------------------------------------------------------

/// The partitions, sorted by name.
#[utoipa::path(get, path = "/v1/partitions", tag = "partitions",
    responses((status = 200, body = PartitionList), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn list_partitions(mgr: &Arc<Manager>, _req: &HttpRequest) -> Reply {
    call(mgr, Request::List, 200)
}

/// Define a partition (`parctl define`); `dry_run=true` checks it and
/// changes nothing (`parctl validate`).
#[utoipa::path(post, path = "/v1/partitions", tag = "partitions", request_body = DefineBody,
    params(("dry_run" = Option<bool>, Query, description = "check only, define nothing")),
    responses((status = 201, body = PartitionStatus), (status = 200, description = "dry run: the status it would have", body = PartitionStatus),
        (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn define(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let dry_run = tryr!(flag(req, "dry_run"));
    let b: DefineBody = tryr!(body(req));
    let request = Request::Define {
        definition: b.definition,
        restart: b.restart,
        segments: b.segments,
        dry_run,
    };
    call(mgr, request, if dry_run { 200 } else { 201 })
}

/// One partition's status (`parctl status --json`).
#[utoipa::path(get, path = "/v1/partitions/{name}", tag = "partitions",
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, body = PartitionStatus), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn status(mgr: &Arc<Manager>, name: String) -> Reply {
    call(mgr, Request::Status { name }, 200)
}

/// Remove a partition that is not active (`parctl undefine`).
#[utoipa::path(delete, path = "/v1/partitions/{name}", tag = "partitions",
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, body = Undefined), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn undefine(mgr: &Arc<Manager>, name: String) -> Reply {
    call(mgr, Request::Undefine { name }, 200)
}

/// The stored definition (`parctl show`).
#[utoipa::path(get, path = "/v1/partitions/{name}/definition", tag = "partitions",
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, body = StoredDefinition), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn show(mgr: &Arc<Manager>, name: String) -> Reply {
    call(mgr, Request::Show { name }, 200)
}

/// Change the stored definition (while not active) or the restart policy
/// (`parctl update`, `parctl edit`).
#[utoipa::path(patch, path = "/v1/partitions/{name}/definition", tag = "partitions", request_body = UpdateBody,
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, body = PartitionStatus), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn update(mgr: &Arc<Manager>, name: String, req: &HttpRequest) -> Reply {
    let b: UpdateBody = tryr!(body(req));
    let request = Request::Update {
        name,
        definition: b.definition,
        restart: b.restart,
    };
    call(mgr, request, 200)
}

/// Start, stop, restart, kill, pause or resume a partition; answers once
/// done (start: once running). Stopping a partition that is not active
/// answers its status.
#[utoipa::path(post, path = "/v1/partitions/{name}/{action}", tag = "partitions",
    params(("name" = String, Path, description = "partition name"),
        ("action" = String, Path, description = "start, stop, restart, kill, pause or resume")),
    responses((status = 200, body = PartitionStatus), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn action(mgr: &Arc<Manager>, name: String, action: &str) -> Reply {
    let request = match action {
        "start" => Request::Start { name },
        "stop" => Request::Stop { name },
        "restart" => Request::Restart { name },
        "kill" => Request::Kill { name },
        "pause" => Request::Pause { name },
        "resume" => Request::Resume { name },
        other => {
            return error(
                ErrorKind::NotFound,
                format!("no action `{other}` (start, stop, restart, kill, pause, resume)"),
            )
        }
    };
    call(mgr, request, 200)
}

/// Change a partition's processor entitlement, running or not, within its
/// `cpu` section's min and max (`parctl set`, docs/workload.md).
#[utoipa::path(patch, path = "/v1/partitions/{name}/cpu", tag = "partitions", request_body = CpuBody,
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, body = PartitionStatus), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn set_cpu(mgr: &Arc<Manager>, name: String, req: &HttpRequest) -> Reply {
    let b: CpuBody = tryr!(body(req));
    let request = Request::SetCpu {
        name,
        entitled: b.entitled,
        mode: b.mode,
        weight: b.weight,
    };
    call(mgr, request, 200)
}

/// The workload policy and its last moves (`parctl policy show`).
#[utoipa::path(get, path = "/v1/policy", tag = "partitions",
    responses((status = 200, body = PolicyView), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn policy_show(mgr: &Arc<Manager>) -> Reply {
    call(mgr, Request::PolicyShow, 200)
}

/// Replace the workload policy (`parctl policy set`).
#[utoipa::path(put, path = "/v1/policy", tag = "partitions", request_body = Policy,
    responses((status = 200, body = PolicyView), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn policy_set(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let policy: Policy = tryr!(body(req));
    call(mgr, Request::PolicySet { policy }, 200)
}

/// The end of the console log (at most 1 MiB), as text.
#[utoipa::path(get, path = "/v1/partitions/{name}/console", tag = "partitions",
    params(("name" = String, Path, description = "partition name")),
    responses((status = 200, content_type = "text/plain", body = String), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn console(mgr: &Arc<Manager>, name: String) -> Reply {
    let (answer, file) = daemon::handle(mgr, Request::Logs { name });
    let Some(mut f) = file else {
        return answer_of(answer, 200);
    };
    let mut out = Vec::new();
    let read = f
        .seek(SeekFrom::End(0))
        .and_then(|len| f.seek(SeekFrom::Start(len.saturating_sub(MAX_CONSOLE))))
        .and_then(|_| f.take(MAX_CONSOLE).read_to_end(&mut out));
    match read {
        Ok(_) => Reply::Body(200, "text/plain; charset=utf-8", out),
        Err(e) => error(
            ErrorKind::Internal,
            format!("cannot read the console log: {e}"),
        ),
    }
}

/// The VIOS partitions and their exports.
#[utoipa::path(get, path = "/v1/vios", tag = "vios",
    responses((status = 200, body = PartitionList), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn list_vios(mgr: &Arc<Manager>) -> Reply {
    let partitions: Vec<_> = mgr
        .list()
        .into_iter()
        .filter(|p| p.kind.as_deref() == Some("vios"))
        .collect();
    json(200, PartitionList { partitions })
}

/// Create a segment (`parctl segment create`).
#[utoipa::path(post, path = "/v1/segments", tag = "grants", request_body = SegmentBody,
    responses((status = 201, body = SegmentInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn segment_create(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: SegmentBody = tryr!(body(req));
    let request = Request::SegmentCreate {
        owner: b.owner,
        id: b.id,
        size: b.size,
        gpa: b.gpa,
    };
    call(mgr, request, 201)
}

/// The memory segments (the `segments` of `GET /v1/grants`).
#[utoipa::path(get, path = "/v1/segments", tag = "grants",
    responses((status = 200, body = SegmentList), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn segments(mgr: &Arc<Manager>) -> Reply {
    let (segments, _, _) = mgr.grant_table();
    json(200, SegmentList { segments })
}

/// Segments, grants and doorbells (`parctl grants --json`).
#[utoipa::path(get, path = "/v1/grants", tag = "grants",
    responses((status = 200, body = GrantTable), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn grants(mgr: &Arc<Manager>) -> Reply {
    call(mgr, Request::Grants, 200)
}

/// The owner grants a segment or VIOS disk (`parctl grant`); the answer
/// carries the cookie.
#[utoipa::path(post, path = "/v1/grants", tag = "grants", request_body = GrantBody,
    responses((status = 201, body = GrantInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn grant(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: GrantBody = tryr!(body(req));
    let request = Request::Grant {
        segment: b.segment,
        grantee: b.grantee,
        rights: b.rights,
    };
    call(mgr, request, 201)
}

/// The grantee accepts a cookie (`parctl accept`); answers once mapped.
#[utoipa::path(post, path = "/v1/grants/accept", tag = "grants", request_body = AcceptBody,
    responses((status = 200, body = GrantInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn accept(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: AcceptBody = tryr!(body(req));
    let request = Request::Accept {
        cookie: b.cookie,
        partition: b.partition,
        gpa: b.gpa,
    };
    call(mgr, request, 200)
}

/// Grant an accepted cookie on (`parctl regrant`).
#[utoipa::path(post, path = "/v1/grants/regrant", tag = "grants", request_body = RegrantBody,
    responses((status = 201, body = GrantInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn regrant(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: RegrantBody = tryr!(body(req));
    let request = Request::Regrant {
        cookie: b.cookie,
        partition: b.partition,
        grantee: b.grantee,
        rights: b.rights,
    };
    call(mgr, request, 201)
}

/// Revoke a cookie and its descendants (`parctl revoke`); answers once
/// every affected VMM unmapped.
#[utoipa::path(post, path = "/v1/grants/revoke", tag = "grants", request_body = RevokeBody,
    responses((status = 200, body = Revoked), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn revoke(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: RevokeBody = tryr!(body(req));
    let request = Request::Revoke {
        cookie: b.cookie,
        partition: b.partition,
    };
    call(mgr, request, 200)
}

/// Copy between two segments a partition holds cookies for (`parctl
/// copy`).
#[utoipa::path(post, path = "/v1/copy", tag = "grants", request_body = CopyBody,
    responses((status = 200, body = Copied), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn copy(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: CopyBody = tryr!(body(req));
    let request = Request::Copy {
        partition: b.partition,
        src: b.src,
        src_offset: b.src_offset,
        dst: b.dst,
        dst_offset: b.dst_offset,
        len: b.len,
    };
    call(mgr, request, 200)
}

/// Apply a shared-segment configuration (`parctl share`).
#[utoipa::path(post, path = "/v1/share", tag = "grants", request_body = SharedConfig,
    responses((status = 200, body = GrantTable), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn share(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let config: SharedConfig = tryr!(body(req));
    call(mgr, Request::Share { config }, 200)
}

/// The shared memory pool (`parctl pool show --json`).
#[utoipa::path(get, path = "/v1/pool", tag = "pool",
    responses((status = 200, body = PoolInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn pool_show(mgr: &Arc<Manager>) -> Reply {
    call(mgr, Request::PoolShow, 200)
}

/// Create the pool (`parctl pool create`).
#[utoipa::path(post, path = "/v1/pool", tag = "pool", request_body = PoolCreateBody,
    responses((status = 201, body = PoolInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn pool_create(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: PoolCreateBody = tryr!(body(req));
    let request = Request::PoolCreate {
        size_mib: b.size_mib,
        paging: b.paging,
    };
    call(mgr, request, 201)
}

/// Resize the pool (`parctl pool resize`); answers once the partitions
/// hold no more.
#[utoipa::path(patch, path = "/v1/pool", tag = "pool", request_body = PoolResizeBody,
    responses((status = 200, body = PoolInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn pool_resize(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: PoolResizeBody = tryr!(body(req));
    call(
        mgr,
        Request::PoolResize {
            size_mib: b.size_mib,
        },
        200,
    )
}

/// Add a paging device (`parctl pool add-paging`).
#[utoipa::path(post, path = "/v1/pool/paging", tag = "pool", request_body = PagingBody,
    responses((status = 200, body = PoolInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn pool_add_paging(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: PagingBody = tryr!(body(req));
    call(mgr, Request::PoolAddPaging { device: b.device }, 200)
}

/// Remove a paging device (`parctl pool remove-paging`).
#[utoipa::path(post, path = "/v1/pool/paging/remove", tag = "pool", request_body = PagingBody,
    responses((status = 200, body = PoolInfo), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn pool_remove_paging(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let b: PagingBody = tryr!(body(req));
    call(mgr, Request::PoolRemovePaging { device: b.device }, 200)
}

/// The events after `since` (`parctl events --json`); `wait_ms` waits for
/// one. With `Accept: text/event-stream` the answer is a server-sent event
/// stream instead (one `data:` line of JSON per event, `id:` its `seq`;
/// `Last-Event-ID` resumes), which lasts until the client goes.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(("since" = Option<u64>, Query, description = "the last seq seen (0: from the oldest held)"),
        ("wait_ms" = Option<u64>, Query, maximum = 10000, description = "wait this long for an event when none is there yet")),
    responses((status = 200, body = EventBatch), (status = "4XX", body = ApiError), (status = "5XX", body = ApiError)))]
pub fn events(mgr: &Arc<Manager>, req: &HttpRequest) -> Reply {
    let mut since = tryr!(number(req, "since", u64::MAX));
    let wait_ms = tryr!(number(req, "wait_ms", 10_000));
    let sse = req
        .header("accept")
        .is_some_and(|a| a.contains("text/event-stream"));
    if sse {
        if let Some(id) = req.header("last-event-id") {
            since = tryr!(id.parse::<u64>().map_err(|_| error(
                ErrorKind::BadRequest,
                format!("Last-Event-ID `{id}` is not a number")
            )));
        }
        return Reply::Events { since };
    }
    call(mgr, Request::Events { since, wait_ms }, 200)
}

/// One path segment, percent-decoded.
pub fn segment(raw: &str) -> Result<String, Reply> {
    percent_decode(raw, false).ok_or_else(|| {
        error(
            ErrorKind::BadRequest,
            format!("path segment `{raw}` is not valid percent-encoded UTF-8"),
        )
    })
}
