//! parvm's wire protocol: every message that crosses a process boundary
//! (`parctl` -> manager, manager <-> VMM, manager <-> VIOS), and the framing
//! that carries them.
//!
//! Module map:
//! - [`frame`]: the frame format (magic, version, fd count, length, JSON
//!   body), [`Channel`] to send and receive frames with file descriptors
//!   beside them (SCM_RIGHTS), and [`ProtocolError`].
//! - [`grant`]: grant cookies, rights, grant-table rows, segments and the
//!   guest's hcalls as they travel.
//! - [`pool`]: the shared memory pool (Active Memory Sharing) as it
//!   travels: paging devices, the pool and its members, a shared-memory
//!   partition's figures, the pager's reports and a VIOS's export sizes.
//! - [`managed`]: what a VMM and a VIOS both do as processes run by the
//!   manager: take the inherited control socket, and after a manager
//!   restart dial its socket again (peer checked with `SO_PEERCRED`) and
//!   attach with the token.
//! - [`dump`]: firmware-assisted dump: the table on a dump disk (outside
//!   input when read back, checked field by field) and the dump records as
//!   they travel.
//! - [`cli`]: what every binary does at its edge (logging, one-line errors).
//! - this file: the message types, one enum per direction and peer:
//!   [`Request`]/[`Response`] on the manager's listening socket,
//!   [`ManagerToVmm`], [`ManagerToVios`] and [`ToManager`] on a partition's
//!   control channel (each variant declares the descriptors beside it,
//!   [`Message::fds`], and the [`Channel`] refuses a frame without them),
//!   and the shared status types.
//!
//! Data flows in request/response pairs on the listening socket (one
//! response per request, except `Console`, after which the client streams
//! [`Request::ConsoleInput`] and the manager ends with
//! [`Response::ConsoleEnded`]); on a control channel both sides send
//! whenever they need to. See docs/protocol.md.
//!
//! Definitions travel typed ([`parvm_config::Definition`]); this crate
//! depends on `parvm-config` only, and every process (`vmm`, `vios`, the
//! partition manager, `parctl`) depends on it.

pub mod cli;
pub mod dump;
mod error_kind;
pub mod event;
pub mod frame;
pub mod grant;
pub mod managed;
pub mod pool;
pub mod workload;

pub use dump::{DumpRecord, DumpState, DumpTrigger};
pub use event::{Event, EventBatch, EventKind};
pub use frame::{
    Channel, Fds, Message, ProtocolError, HEADER_LEN, MAGIC, MAX_FDS, MAX_FRAME, VERSION,
};
pub use grant::{
    DoorbellInfo, GrantCookie, GrantInfo, GrantState, Hcall, HcallOutcome, Rights, SegmentInfo,
    SegmentSpec, SharedConfig,
};
pub use pool::{
    DiskStats, ExportInfo, MemoryReport, PagingDevice, PagingDeviceInfo, PoolInfo, PoolMemberInfo,
    SharedMemoryStatus, LATENCY_BUCKETS_US, PAGES_PER_MIB,
};

pub use parvm_config::{CpuMode, Definition, ProcUnits, RestartPolicy};
use serde::{Deserialize, Serialize};
pub use workload::{CpuStatus, Policy, PolicyMove};

/// Lifecycle state of a partition, as stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PartitionState {
    /// Defined, never started.
    Defined,
    /// A VMM was spawned; it has not reported ready yet.
    Starting,
    /// The VMM reported ready: the vCPUs run.
    Running,
    /// The vCPUs are held at a barrier (`parctl pause`).
    Paused,
    /// A stop was requested; the VMM has not exited yet.
    Stopping,
    /// The VMM exited cleanly (guest power-off/reset, stop, kill).
    Stopped,
    /// The VMM died or the guest crashed.
    Crashed,
}

impl PartitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionState::Defined => "defined",
            PartitionState::Starting => "starting",
            PartitionState::Running => "running",
            PartitionState::Paused => "paused",
            PartitionState::Stopping => "stopping",
            PartitionState::Stopped => "stopped",
            PartitionState::Crashed => "crashed",
        }
    }

    /// Whether a VMM process is (believed to be) alive in this state.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            PartitionState::Starting
                | PartitionState::Running
                | PartitionState::Paused
                | PartitionState::Stopping
        )
    }
}

impl std::fmt::Display for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for PartitionState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown partition state `{s}`"))
    }
}

/// One partition as `parctl status --json` and `list --json` show it. The
/// field set is stable: fields may be added, never renamed or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PartitionStatus {
    pub name: String,
    pub state: PartitionState,
    /// The VMM's process id while one is alive.
    pub pid: Option<u32>,
    pub vcpus: u64,
    pub memory_mib: u64,
    pub kernel: String,
    pub restart: RestartPolicy,
    /// Automatic restarts since the operator last started it.
    pub restarts: u32,
    /// Why the last VMM exited (`null` before the first exit).
    pub last_exit: Option<String>,
    /// Whether the manager holds a live control channel to the VMM.
    pub attached: bool,
    /// The console log file.
    pub console_log: String,
    /// Unix time (seconds) of the last state change.
    pub since: u64,
    /// `vios` for a VIOS partition (docs/vios.md); absent for a VMM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A VIOS partition's exported disks (`id`, or `id:ro`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,
    /// A shared-memory partition's figures (docs/ams.md); absent for
    /// dedicated memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<SharedMemoryStatus>,
    /// Processor entitlement and use (docs/workload.md); absent when the
    /// partition has no `cpu` section and no process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuStatus>,
}

/// Kinds of errors the manager answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request could not be decoded or a field is invalid.
    BadRequest,
    /// No partition of that name.
    NotFound,
    /// A partition of that name exists already.
    AlreadyExists,
    /// The partition is in a state that does not allow the operation.
    InvalidState,
    /// The peer is not allowed to talk to the manager.
    PermissionDenied,
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// The VMM could not be started or did not become ready.
    StartFailed,
    /// The manager failed (store, spawn, ...).
    Internal,
    /// A cookie the manager never minted (forged or mistyped).
    UnknownCookie,
    /// A cookie presented by a partition that is not its grantee, or an
    /// operation by a partition that may not do it.
    WrongPartition,
    /// A revoked, released or already accepted cookie.
    CookieUsed,
    /// A regrant asking for more rights than its holder has.
    RightsEscalation,
    /// The guest physical address overlaps RAM, a device or another mapping.
    GpaConflict,
    /// A segment larger than allowed (or not whole pages).
    TooLarge,
    /// The manager serves as many clients as it allows; try again later.
    Busy,
}

/// `parctl` (or a reconnecting VMM) -> manager, on the listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Registers a partition. `definition` is a partition or VIOS
    /// definition ([`parvm_config::Definition`]) with absolute paths and
    /// without the manager-side fields, which travel beside it.
    Define {
        definition: Definition,
        #[serde(default)]
        restart: RestartPolicy,
        /// Memory segments the partition owns (manager-side field).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        segments: Vec<SegmentSpec>,
        /// Check everything a define checks (the manager's checks
        /// included) and change nothing: `parctl validate`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        dry_run: bool,
    },
    /// The stored definition: answered with [`Response::Definition`].
    Show {
        name: String,
    },
    /// Changes a defined partition: a new `definition` (same name; only
    /// while it is not active) and/or a new `restart` policy (any time).
    /// Answered with its status.
    Update {
        name: String,
        #[serde(default)]
        definition: Option<Definition>,
        #[serde(default)]
        restart: Option<RestartPolicy>,
    },
    /// The events after `since` (0: from the oldest held); with
    /// `wait_ms`, waits up to that long (at most 30 s) for one to come.
    /// Answered with [`Response::Events`].
    Events {
        #[serde(default)]
        since: u64,
        #[serde(default)]
        wait_ms: u64,
    },
    Undefine {
        name: String,
    },
    /// Starts the partition and answers once it is running (or failed).
    Start {
        name: String,
    },
    /// Asks the VMM to stop; answers once it has exited.
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// SIGKILL to the VMM; the partition ends up stopped, not restarted.
    Kill {
        name: String,
    },
    Pause {
        name: String,
    },
    /// Changes a partition's processor entitlement, running or not
    /// (PowerVM's dynamic LPAR): what is given replaces the stored `cpu`
    /// section's field, within its min and max.
    SetCpu {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entitled: Option<parvm_config::ProcUnits>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<parvm_config::CpuMode>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<u8>,
    },
    Resume {
        name: String,
    },
    List,
    Status {
        name: String,
    },
    /// Answered with [`Response::LogFile`] and the console log's fd.
    Logs {
        name: String,
    },
    /// Answered with [`Response::LogFile`] and the console log's fd; the
    /// connection then carries [`Request::ConsoleInput`] until
    /// [`Response::ConsoleEnded`].
    Console {
        name: String,
    },
    /// Bytes for the guest's serial console (after `Console`).
    ConsoleInput {
        data: Vec<u8>,
    },
    /// A VMM whose manager went away re-attaches: the connection becomes its
    /// control channel if `token` and the peer's pid match the registry.
    Attach {
        name: String,
        pid: u32,
        token: String,
        paused: bool,
    },
    /// Creates a memory segment owned by `owner`; mapped at `gpa` (in the
    /// owner, while it runs) if given.
    SegmentCreate {
        owner: String,
        id: String,
        size: u64,
        #[serde(default)]
        gpa: Option<u64>,
    },
    /// The owner of `segment` (`OWNER/ID`) grants it to `grantee`.
    Grant {
        segment: String,
        grantee: String,
        rights: Rights,
    },
    /// `partition` accepts `cookie` (it must be the grantee), mapping it at
    /// `gpa` or where its VMM chooses.
    Accept {
        cookie: GrantCookie,
        partition: String,
        #[serde(default)]
        gpa: Option<u64>,
    },
    /// `partition`, holding the accepted `cookie`, grants the same segment
    /// on to `grantee` with at most its own rights.
    Regrant {
        cookie: GrantCookie,
        partition: String,
        grantee: String,
        rights: Rights,
    },
    /// Revokes `cookie` and every grant made from it; answered once every
    /// affected VMM has unmapped. `partition` (default: the grantor) must be
    /// the grantor or the segment's owner.
    Revoke {
        cookie: GrantCookie,
        #[serde(default)]
        partition: Option<String>,
    },
    /// `partition` copies `len` bytes between two segments it holds
    /// cookies for (the data mover: nothing is mapped anywhere new).
    Copy {
        partition: String,
        src: GrantCookie,
        src_offset: u64,
        dst: GrantCookie,
        dst_offset: u64,
        len: u64,
    },
    /// The grant table.
    Grants,
    /// Applies a shared-segment configuration (docs/manager.md).
    Share {
        config: SharedConfig,
    },
    /// Creates the shared memory pool (docs/ams.md): `size_mib` of
    /// physical memory for shared-memory partitions, and its paging
    /// devices.
    PoolCreate {
        size_mib: u64,
        #[serde(default)]
        paging: Vec<PagingDevice>,
    },
    /// A new physical size; answered once the partitions are under it.
    PoolResize {
        size_mib: u64,
    },
    PoolAddPaging {
        device: PagingDevice,
    },
    /// Refused while a running partition has the device.
    PoolRemovePaging {
        device: PagingDevice,
    },
    PoolShow,
    /// Replaces the workload policy (docs/workload.md); answered with
    /// [`Response::Policy`].
    PolicySet {
        policy: Policy,
    },
    /// The workload policy and its recent moves.
    PolicyShow,
    /// Dumps (docs/dump.md): of the running partition (it keeps running),
    /// answered with `Dump` once it ended; the list; one, answered with
    /// `DumpFile` and the dump disk's image (read-only) beside it.
    Dump {
        name: String,
    },
    Dumps {
        name: String,
    },
    DumpGet {
        name: String,
        id: u64,
    },
}

/// Manager -> `parctl` (or a reconnecting VMM).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The partition after the operation.
    Status {
        status: PartitionStatus,
    },
    List {
        partitions: Vec<PartitionStatus>,
    },
    Undefined {
        name: String,
    },
    /// The console log's file descriptor travels beside this frame.
    LogFile {
        name: String,
        path: String,
    },
    /// The partition stopped: the console session is over.
    ConsoleEnded {
        reason: String,
    },
    /// An `Attach` was accepted: the connection is now a control channel.
    Attached,
    Segment {
        segment: SegmentInfo,
    },
    /// A grant after `grant`, `regrant`, `accept`.
    Grant {
        grant: GrantInfo,
    },
    /// Every grant `revoke` ended, once every affected VMM unmapped.
    Revoked {
        revoked: Vec<GrantInfo>,
    },
    Copied {
        bytes: u64,
    },
    Grants {
        segments: Vec<SegmentInfo>,
        grants: Vec<GrantInfo>,
        #[serde(default)]
        doorbells: Vec<DoorbellInfo>,
    },
    /// A shared-segment configuration applied.
    Shared {
        segments: Vec<SegmentInfo>,
        grants: Vec<GrantInfo>,
        doorbells: Vec<DoorbellInfo>,
    },
    /// A dump after `dump`; a partition's dumps (oldest first) and its
    /// dump disk; one dump with the disk's image beside this frame (the
    /// core is `dump.size` bytes at `dump.offset` of it).
    Dump {
        dump: DumpRecord,
    },
    Dumps {
        disk: String,
        dumps: Vec<DumpRecord>,
    },
    DumpFile {
        dump: DumpRecord,
    },
    /// The pool after `pool_*`.
    /// The workload policy and its last moves, oldest first.
    Policy {
        policy: Policy,
        moves: Vec<PolicyMove>,
    },
    Pool {
        pool: PoolInfo,
    },
    /// A partition's stored definition (`show`): absolute paths, the
    /// manager-side fields beside it.
    Definition {
        name: String,
        definition: Definition,
        restart: RestartPolicy,
        segments: Vec<SegmentSpec>,
    },
    /// Events after the `since` asked for.
    Events(EventBatch),
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// How a VMM ended, as it reports it on the way out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    /// The guest reset itself.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// Stopped on the manager's request.
    Stopped,
    /// Stopped by a signal (SIGTERM, SIGINT).
    Signal { signal: i32 },
    /// The guest crashed (triple fault, KVM error).
    Crash { reason: String },
}

impl ExitStatus {
    /// Whether the restart policy treats this exit as a failure.
    pub fn is_failure(&self) -> bool {
        matches!(self, ExitStatus::Crash { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            ExitStatus::Reset => "guest reset".into(),
            ExitStatus::PowerOff => "guest powered off".into(),
            ExitStatus::Stopped => "stopped".into(),
            ExitStatus::Signal { signal } => format!("stopped by signal {signal}"),
            ExitStatus::Crash { reason } => format!("guest crashed: {reason}"),
        }
    }
}

/// VMM or VIOS -> manager on a control channel. A VIOS sends `Hello`,
/// `Ready`, `Exit` and `Failed` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToManager {
    /// First message on a spawned VMM's (or VIOS's) channel.
    Hello {
        version: u16,
        name: String,
        pid: u32,
    },
    /// Every vCPU thread runs.
    Ready,
    Paused,
    Resumed,
    /// Last message: the VMM is exiting.
    Exit {
        status: ExitStatus,
        code: i32,
    },
    /// A control request could not be carried out.
    Failed {
        message: String,
    },
    /// `Map` done: the memory is a KVM slot at `gpa`.
    Mapped {
        key: String,
        gpa: u64,
    },
    /// `Map` refused (`conflict`: the address overlaps something).
    MapFailed {
        key: String,
        message: String,
        conflict: bool,
    },
    /// `Unmap` done: the slot is removed and the memory unmapped.
    Unmapped {
        key: String,
    },
    /// The guest touched a revoked mapping, or wrote to a read-only one
    /// (`key` names it); `count` accesses so far.
    Fault {
        key: String,
        gpa: u64,
        write: bool,
        count: u64,
    },
    /// After re-attaching: the VMM still maps `key`; its memfd (or a
    /// doorbell's eventfd) travels beside (a restarted manager adopts it as
    /// the segment's memory).
    Holding {
        key: String,
        /// Where it is mapped (none for a doorbell).
        #[serde(default)]
        gpa: Option<u64>,
    },
    /// A guest hcall; answered with [`ManagerToVmm::HcallDone`].
    Hcall {
        seq: u64,
        call: Hcall,
    },
    /// A shared-memory VMM's pager figures: after each `MemoryTarget`, at
    /// most every second while they change, at once when resident falls
    /// under the target, and after re-attaching (docs/protocol.md).
    MemoryReport {
        report: MemoryReport,
    },
    /// A VIOS's exports and their sizes, before `Ready` and after
    /// re-attaching.
    Exports {
        exports: Vec<ExportInfo>,
    },
    /// A VIOS's per-export figures, the answer to `ManagerToVios::Stats`.
    DiskStats {
        disks: Vec<DiskStats>,
    },
    /// A dump started, went on or ended (complete or failed).
    DumpProgress {
        dump: DumpRecord,
    },
    /// Before `Exit`: the partition reboots while this process finishes
    /// the dump (`then: reboot`, docs/dump.md); the disk has its record.
    DumpDetached {
        dump: DumpRecord,
    },
    /// The answer to [`ManagerToVmm::Dump`]: the final record, or why not.
    DumpDone {
        #[serde(default)]
        dump: Option<DumpRecord>,
        #[serde(default)]
        error: Option<String>,
    },
}

impl Message for ToManager {
    const TAG: &'static str = "msg";
    fn fds(&self) -> Fds {
        match self {
            ToManager::Holding { key, .. } if key.starts_with("doorbell:") => Fds::One("eventfd"),
            ToManager::Holding { .. } => Fds::One("memfd"),
            _ => Fds::None,
        }
    }
}

/// Manager -> VMM on a control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum ManagerToVmm {
    /// The reconnect token (docs/protocol.md, "Re-attaching"): the first
    /// message the manager sends on a spawned VMM's channel. Not a flag nor
    /// an environment variable: both are readable in `/proc`.
    Token {
        token: String,
    },
    /// Orderly shutdown: the VMM stops its vCPUs and exits 0.
    Stop,
    Pause,
    Resume,
    ConsoleInput {
        data: Vec<u8>,
    },
    /// Map the memfd beside this frame (`size` bytes) into the guest at
    /// `gpa` (or where the VMM chooses); answered with `Mapped` or
    /// `MapFailed`.
    Map {
        key: String,
        #[serde(default)]
        gpa: Option<u64>,
        size: u64,
        read_only: bool,
    },
    /// Remove the mapping `key`; answered with `Unmapped` once the guest
    /// can no longer reach it.
    Unmap {
        key: String,
    },
    HcallDone {
        seq: u64,
        outcome: HcallOutcome,
    },
    /// The VIOS serving disk `disk` (the disk id in the VMM's definition)
    /// came back; the socket beside this frame is the new connection to it.
    /// The VMM replays the disk's in-flight requests.
    VhostUserReconnect {
        disk: String,
    },
    /// Wire the eventfd beside this frame as a doorbell end: `ring`: a
    /// guest write to doorbell register `ring` signals it (ioeventfd);
    /// `gsi`: a signal interrupts the guest on that GSI (irqfd).
    Doorbell {
        id: String,
        #[serde(default)]
        ring: Option<u32>,
        #[serde(default)]
        gsi: Option<u32>,
        /// Interrupt with an MSI of this vector instead of a GSI.
        #[serde(default)]
        vector: Option<u8>,
    },
    /// A shared-memory partition's new resident target, in pages of 4 KiB
    /// (the pager evicts to get under it); answered with a
    /// `MemoryReport`.
    MemoryTarget {
        pages: u64,
    },
    /// The VIOS serving the paging device came back; the socket beside
    /// this frame is the new connection to it, for the pager's evictor if
    /// `evictor`, else for its fault thread (one frame each).
    PagingReconnect {
        #[serde(default)]
        evictor: bool,
    },
    /// Dump the running partition: `DumpProgress` reports, then `DumpDone`.
    Dump,
    /// The VIOS serving the dump disk came back; the socket beside this
    /// frame is the new connection to it.
    DumpReconnect,
}

impl Message for ManagerToVmm {
    const TAG: &'static str = "msg";
    fn fds(&self) -> Fds {
        match self {
            ManagerToVmm::Map { .. } => Fds::One("memfd"),
            ManagerToVmm::Doorbell { .. } => Fds::One("eventfd"),
            ManagerToVmm::VhostUserReconnect { .. }
            | ManagerToVmm::PagingReconnect { .. }
            | ManagerToVmm::DumpReconnect => Fds::One("socket"),
            _ => Fds::None,
        }
    }
}

/// Manager -> VIOS on a control channel (docs/vios.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case", deny_unknown_fields)]
pub enum ManagerToVios {
    /// The reconnect token, as [`ManagerToVmm::Token`].
    Token { token: String },
    /// Orderly shutdown: the VIOS answers `Exit` and exits 0.
    Stop,
    /// Serve export `disk` to partition `client` on the socket beside this
    /// frame (the VIOS end of a socketpair whose other end the client's VMM
    /// got).
    ViosConnect {
        disk: String,
        client: String,
        /// Serve this client read-only (its grant of the disk is `ro`),
        /// whatever the export's own mode.
        #[serde(default)]
        read_only: bool,
    },
    /// The grant of export `disk` to `client` was revoked; close every
    /// connection serving it to that client.
    ViosDisconnect { disk: String, client: String },
    /// Asks for the exports' figures (answered with `DiskStats`).
    Stats,
}

impl Message for ManagerToVios {
    const TAG: &'static str = "msg";
    fn fds(&self) -> Fds {
        match self {
            ManagerToVios::ViosConnect { .. } => Fds::One("socket"),
            ManagerToVios::Token { .. }
            | ManagerToVios::Stop
            | ManagerToVios::ViosDisconnect { .. }
            | ManagerToVios::Stats => Fds::None,
        }
    }
}

impl Message for Request {
    const TAG: &'static str = "op";
    fn fds(&self) -> Fds {
        Fds::None
    }
}

impl Message for Response {
    const TAG: &'static str = "result";
    fn fds(&self) -> Fds {
        match self {
            Response::LogFile { .. } => Fds::One("log file"),
            Response::DumpFile { .. } => Fds::One("dump disk image"),
            _ => Fds::None,
        }
    }
}

#[cfg(test)]
mod tests;
