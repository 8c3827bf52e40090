//! `/metrics`: the OpenMetrics text (which Prometheus scrapes) of what the
//! manager knows, built afresh from its state at each scrape, plus the
//! counts it keeps: events by type since it started and the API's own
//! requests (by method, route and status) and their latency.
//!
//! Per-VIOS-disk figures (requests, errors, bytes, latency) are those each
//! running VIOS last reported (asked for every 2 s).

use crate::manager::Manager;
use parvm_protocol::{GrantState, PartitionState, LATENCY_BUCKETS_US};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::Duration;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiskLabels {
    vios: String,
    disk: String,
}

/// A histogram another process counted (a VIOS's latency buckets): its
/// sum, count and per-bucket counts (not cumulative), encoded as is.
#[derive(Debug, Default)]
struct ReportedHistogram(std::sync::Mutex<Reported>);

/// Sum, count, and (upper bound, count) per bucket.
type Reported = (f64, u64, Vec<(f64, u64)>);

impl ReportedHistogram {
    fn set(&self, sum: f64, count: u64, buckets: Vec<(f64, u64)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (sum, count, buckets);
    }
}

impl TypedMetric for ReportedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ReportedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (sum, count, buckets) = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 4.0, 9))
}

/// What the API counts itself, kept across scrapes.
pub struct ApiMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for ApiMetrics {
    fn default() -> Self {
        ApiMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency),
        }
    }
}

impl ApiMetrics {
    /// One answered request.
    pub fn count(&self, method: &str, route: &str, status: u16, _took: Duration) {
        // Methods outside HTTP's own set would make a label per client
        // whim: one bucket for them.
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        self.requests
            .get_or_create(&RequestLabels {
                method: method.into(),
                route: route.into(),
                code: status.to_string(),
            })
            .inc();
    }

    /// How long a request of `route` took to answer.
    pub fn observe(&self, route: &str, took: Duration) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.into(),
            })
            .observe(took.as_secs_f64());
    }
}

fn gauge(v: u64) -> Gauge {
    let g = Gauge::default();
    g.set(i64::try_from(v).unwrap_or(i64::MAX));
    g
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VcpuLabels {
    partition: String,
    vcpu: String,
}

/// A VMM process's CPU time (user + system, all threads: mostly its
/// vCPUs), from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_seconds(&format!("/proc/{pid}/stat"))
}

/// Each vCPU thread's CPU time (the threads named `vcpuN`), from
/// `/proc/PID/task/TID/stat`.
fn vcpu_seconds(pid: u32) -> Vec<(String, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            let index = comm.trim().strip_prefix("vcpu")?.parse::<u32>().ok()?;
            let secs = stat_seconds(&t.path().join("stat").display().to_string())?;
            Some((index.to_string(), secs))
        })
        .collect()
}

/// utime + stime of a `/proc/.../stat` file, in seconds.
fn stat_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // After the command name in parentheses: state is field 3, utime 14.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| (utime + stime) as f64 / hz as f64)
}

/// Each VIOS export's figures as its VIOS last reported them.
fn register_disks(reg: &mut Registry, mgr: &Manager) {
    let requests = Family::<DiskLabels, Counter>::default();
    let errors = Family::<DiskLabels, Counter>::default();
    let read = Family::<DiskLabels, Counter>::default();
    let written = Family::<DiskLabels, Counter>::default();
    let latency = Family::<DiskLabels, ReportedHistogram>::default();
    for (vios, disks) in mgr.disk_stats() {
        for d in disks {
            let l = DiskLabels {
                vios: vios.clone(),
                disk: d.disk.clone(),
            };
            requests.get_or_create(&l).inc_by(d.requests);
            errors.get_or_create(&l).inc_by(d.errors);
            read.get_or_create(&l).inc_by(d.read_bytes);
            written.get_or_create(&l).inc_by(d.written_bytes);
            // Bounds in seconds; the last bucket is +Inf.
            let bounds = LATENCY_BUCKETS_US
                .iter()
                .map(|us| *us as f64 / 1e6)
                .chain(std::iter::once(f64::MAX));
            let buckets: Vec<(f64, u64)> = bounds.zip(d.latency.iter().copied()).collect();
            let count = d.latency.iter().sum();
            latency
                .get_or_create(&l)
                .set(d.latency_ns as f64 / 1e9, count, buckets);
        }
    }
    reg.register(
        "vios_disk_requests",
        "Requests a VIOS export completed, over all its clients",
        requests,
    );
    reg.register(
        "vios_disk_errors",
        "Requests of a VIOS export that ended with an error",
        errors,
    );
    reg.register_with_unit(
        "vios_disk_read",
        "Bytes a VIOS export read for its clients",
        Unit::Bytes,
        read,
    );
    reg.register_with_unit(
        "vios_disk_written",
        "Bytes a VIOS export wrote for its clients",
        Unit::Bytes,
        written,
    );
    reg.register_with_unit(
        "vios_disk_request_duration",
        "Time a VIOS took to execute a request of the export",
        Unit::Seconds,
        latency,
    );
}

/// The OpenMetrics text of the manager's state now.
pub fn render(mgr: &Manager, api: &ApiMetrics) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("parvm");
    let partitions = mgr.list();

    let by_state = Family::<StateLabels, Gauge>::default();
    for state in [
        PartitionState::Defined,
        PartitionState::Starting,
        PartitionState::Running,
        PartitionState::Paused,
        PartitionState::Stopping,
        PartitionState::Stopped,
        PartitionState::Crashed,
    ] {
        let n = partitions.iter().filter(|p| p.state == state).count();
        by_state
            .get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .set(n as i64);
    }
    reg.register(
        "partitions",
        "Partitions (and VIOS partitions) by state",
        by_state,
    );

    let restarts = Family::<PartitionLabels, Gauge>::default();
    let vcpus = Family::<PartitionLabels, Gauge>::default();
    let memory = Family::<PartitionLabels, Gauge>::default();
    let cpu = Family::<PartitionLabels, Counter<f64, AtomicU64>>::default();
    let vcpu = Family::<VcpuLabels, Counter<f64, AtomicU64>>::default();
    let page_ins = Family::<PartitionLabels, Counter>::default();
    let page_outs = Family::<PartitionLabels, Counter>::default();
    let resident = Family::<PartitionLabels, Gauge>::default();
    for p in &partitions {
        let l = PartitionLabels {
            partition: p.name.clone(),
        };
        restarts.get_or_create(&l).set(i64::from(p.restarts));
        if p.kind.is_none() {
            vcpus.get_or_create(&l).set(p.vcpus as i64);
            memory.get_or_create(&l).set((p.memory_mib << 20) as i64);
        }
        if let Some(secs) = p.pid.and_then(cpu_seconds) {
            cpu.get_or_create(&l).inc_by(secs);
        }
        for (index, secs) in p.pid.map(vcpu_seconds).unwrap_or_default() {
            let l = VcpuLabels {
                partition: p.name.clone(),
                vcpu: index,
            };
            vcpu.get_or_create(&l).inc_by(secs);
        }
        if let Some(m) = p.memory.as_ref().filter(|m| m.reported) {
            page_ins.get_or_create(&l).inc_by(m.page_ins);
            page_outs.get_or_create(&l).inc_by(m.page_outs);
            resident.get_or_create(&l).set(m.resident_pages as i64);
        }
    }
    reg.register(
        "partition_restarts",
        "Automatic restarts of the current series (since the operator last started it)",
        restarts,
    );
    reg.register("partition_vcpus", "vCPUs of the partition", vcpus);
    reg.register_with_unit(
        "partition_memory",
        "Guest memory (logical size for shared memory)",
        Unit::Bytes,
        memory,
    );
    reg.register_with_unit(
        "vmm_cpu",
        "CPU time of the partition's VMM process (user + system, its vCPU threads included)",
        Unit::Seconds,
        cpu,
    );
    reg.register_with_unit(
        "vcpu",
        "CPU time of each vCPU thread of the partition's VMM (user + system)",
        Unit::Seconds,
        vcpu,
    );
    reg.register(
        "partition_page_ins",
        "Page-ins of a shared-memory partition's pager",
        page_ins,
    );
    reg.register(
        "partition_page_outs",
        "Page-outs of a shared-memory partition's pager",
        page_outs,
    );
    reg.register(
        "partition_resident_pages",
        "Resident pages (4 KiB) of a shared-memory partition",
        resident,
    );

    let (segments, grants, doorbells) = mgr.grant_table();
    let by_grant_state = Family::<StateLabels, Gauge>::default();
    for state in [
        GrantState::Granted,
        GrantState::Accepted,
        GrantState::Revoked,
        GrantState::Released,
    ] {
        let n = grants.iter().filter(|g| g.state == state).count();
        by_grant_state
            .get_or_create(&StateLabels {
                state: state.to_string(),
            })
            .set(n as i64);
    }
    reg.register(
        "grants",
        "Grants in the grant table by state",
        by_grant_state,
    );
    let faults = Family::<PartitionLabels, Counter>::default();
    for g in &grants {
        faults
            .get_or_create(&PartitionLabels {
                partition: g.grantee.clone(),
            })
            .inc_by(g.faults);
    }
    reg.register(
        "grant_faults",
        "Guest accesses refused on grants (after a revoke, writes to read-only), by grantee",
        faults,
    );
    reg.register("segments", "Memory segments", gauge(segments.len() as u64));
    reg.register(
        "doorbells",
        "Doorbells wired between partitions",
        gauge(doorbells.len() as u64),
    );

    if let Ok(pool) = mgr.pool_show() {
        reg.register_with_unit(
            "pool_size",
            "Physical memory of the shared memory pool",
            Unit::Bytes,
            gauge(pool.size_mib << 20),
        );
        reg.register(
            "pool_resident_pages",
            "Pool pages resident in partitions",
            gauge(pool.resident_pages),
        );
        reg.register(
            "pool_loaned_pages",
            "Pool pages not resident (loaned out)",
            gauge(pool.loaned_pages),
        );
        reg.register(
            "pool_free_pages",
            "Pool pages nobody holds or was promised",
            gauge(pool.free_pages),
        );
        reg.register(
            "pool_paging_devices",
            "Paging devices of the pool",
            gauge(pool.paging.len() as u64),
        );
    }

    register_disks(&mut reg, mgr);

    let counts = mgr.event_log().counts();
    let events = Family::<TypeLabels, Counter>::default();
    for (kind, n) in &counts {
        events
            .get_or_create(&TypeLabels {
                kind: (*kind).into(),
            })
            .inc_by(*n);
    }
    reg.register(
        "events",
        "Events since the manager started, by type (parctl events)",
        events,
    );
    reg.register(
        "automatic_restarts",
        "Automatic restarts scheduled by the restart policy since the manager started",
        counter(counts.get("restart_scheduled").copied().unwrap_or(0)),
    );

    reg.register(
        "api_requests",
        "HTTP API requests answered",
        api.requests.clone(),
    );
    reg.register_with_unit(
        "api_request_duration",
        "Time to answer an HTTP API request",
        Unit::Seconds,
        api.latency.clone(),
    );

    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)?;
    Ok(out)
}
