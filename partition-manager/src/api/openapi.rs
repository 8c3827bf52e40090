//! The OpenAPI 3 document of the HTTP API, derived (utoipa) from the
//! handlers' `#[utoipa::path]` attributes in [`super::routes`] and the
//! wire types' `ToSchema` (the `openapi` feature of `parvm-protocol`):
//! served at `/openapi.json`, printed by `partition-manager --openapi`.

use super::routes::{self, Reply};
use utoipa::OpenApi;

/// The Prometheus/OpenMetrics text of the manager's figures.
#[utoipa::path(get, path = "/metrics", tag = "metrics",
    responses((status = 200, content_type = "application/openmetrics-text", body = String),
        (status = "4XX", body = routes::ApiError), (status = "5XX", body = routes::ApiError)))]
pub fn metrics() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "metrics",
    responses((status = 200, content_type = "application/json", body = Object),
        (status = "4XX", body = routes::ApiError), (status = "5XX", body = routes::ApiError)))]
pub fn document_path() {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "parvm partition manager",
        description = "Partitions, grants, segments, VIOS partitions, the shared memory pool and the event stream of a parvm host: the operations of `parctl` (the native protocol, docs/protocol.md) over HTTP. Errors are `{\"error\": {\"kind\", \"message\"}}` with the native error kind. See docs/api.md.",
    ),
    paths(
        routes::list_partitions,
        routes::define,
        routes::status,
        routes::undefine,
        routes::show,
        routes::update,
        routes::action,
        routes::console,
        routes::set_cpu,
        routes::policy_show,
        routes::policy_set,
        routes::list_vios,
        routes::segments,
        routes::segment_create,
        routes::grants,
        routes::grant,
        routes::accept,
        routes::regrant,
        routes::revoke,
        routes::copy,
        routes::share,
        routes::pool_show,
        routes::pool_create,
        routes::pool_resize,
        routes::pool_add_paging,
        routes::pool_remove_paging,
        routes::events,
        metrics,
        document_path,
    ),
    components(schemas(parvm_protocol::Event, parvm_protocol::EventKind)),
    tags(
        (name = "partitions", description = "define, start, stop, show, update"),
        (name = "grants", description = "segments, grant cookies, the data mover, shared configurations"),
        (name = "vios", description = "VIOS partitions and their exports"),
        (name = "pool", description = "the shared memory pool (Active Memory Sharing)"),
        (name = "events", description = "what happens, in order"),
        (name = "metrics", description = "Prometheus metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

pub fn reply() -> Reply {
    Reply::Body(200, "application/json", document().into_bytes())
}
