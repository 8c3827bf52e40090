//! VIOS partitions (kind `vios`) and the disks client partitions take from
//! them (`"path": "vios:<vios>/<disk>"`). See docs/vios.md.
//!
//! - A definition with `"kind": "vios"` is a [`ViosDefinition`] (parsed by
//!   `parvm-config`'s reader like any definition); the manager runs it with
//!   the `vios` binary next to `vmm` (same flags: `--config`,
//!   `--control-fd 3`, `--manager-socket`). It reports `Hello`/`Ready`, is
//!   stopped with `Stop`, killed and restarted like any partition.
//! - When a client partition starts, [`broker`] resolves each `vios:` disk:
//!   the VIOS must run and export the disk, [`check_block_grant`] must find
//!   an accepted grant of the block resource `vios/disk` to the client,
//!   then the manager creates a socketpair, sends the VIOS its end with
//!   `ViosConnect {disk, client, read_only}` and gives the client's VMM the
//!   other end as an inherited fd, setting the disk's source to
//!   `vhost-user-fd:N` in the definition the VMM reads.
//! - Each export is a block resource `vios/disk` of the grant table, owned
//!   by the VIOS (registered by the grant engine); revoking a grant of it
//!   makes the VIOS close that client's connections ([`disconnect`]).
//!
//! - A shared-memory partition's paging device (an export the pool
//!   assigned it, docs/ams.md) is brokered the same way ([`broker_paging`]),
//!   without a grant: the pool's membership is the operator's decision;
//!   after a VIOS restart the VMM gets a fresh socket with
//!   `PagingReconnect` ([`rebroker_paging`]).
//!
//! The broker keeps no state of its own: it reads the partition table (a
//! VIOS's definition, state and control channel) and the grant table, and
//! is called by the manager on its events (a client starts, a VIOS became
//! ready, a grant of a disk ended).

use crate::error::ManagerError;
use crate::grants::{segment_name, BlockAccess, GrantTable};
use crate::partitions::PartitionTable;
use parvm_config::{Definition, DiskSource, PartitionDefinition, ViosDefinition};
use parvm_protocol::{ManagerToVios, ManagerToVmm, PagingDevice, PartitionState, Rights};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

pub use crate::process::{vios_binary, FIRST_DISK_FD};
pub use parvm_config::VIOS_KIND as KIND;

/// The manager's check of a received VIOS definition: the definition's own
/// checks, and every image an absolute path to an existing file.
pub fn check(def: &ViosDefinition) -> Result<(), ManagerError> {
    def.validate()
        .map_err(|e| ManagerError::BadRequest(format!("VIOS definition (received): {e}")))?;
    for d in &def.disks {
        if !d.path.is_absolute() {
            return Err(ManagerError::BadRequest(format!(
                "VIOS `{}`: disk `{}`: {} is not an absolute path",
                def.name,
                d.id,
                d.path.display()
            )));
        }
        if let Err(e) = std::fs::metadata(&d.path) {
            return Err(ManagerError::BadRequest(format!(
                "VIOS `{}`: disk `{}`: {}: {e}",
                def.name,
                d.id,
                d.path.display()
            )));
        }
    }
    Ok(())
}

/// May `client` use export `disk` of the VIOS `vios`? Only with an
/// accepted, live grant of the block resource `vios/disk` to `client` in
/// the grant table (docs/vios.md, "Grants"). Returns whether the client is
/// to be served read-only: the export is, or every such grant is `ro`.
pub(crate) fn check_block_grant(
    grants: &GrantTable,
    vios: &ViosDefinition,
    disk: &str,
    client: &str,
) -> Result<bool, ManagerError> {
    let Some(export) = vios.disk(disk) else {
        return Err(ManagerError::BadRequest(format!(
            "VIOS `{}` exports no disk `{disk}`",
            vios.name
        )));
    };
    let resource = segment_name(&vios.name, disk);
    match grants.block_access(&resource, client) {
        BlockAccess::Accepted(rights) => Ok(export.read_only || rights == Rights::Ro),
        BlockAccess::Pending => Err(ManagerError::PermissionDenied(format!(
            "the grant of VIOS disk `{resource}` to partition `{client}` is not accepted yet (parctl accept COOKIE --as {client})"
        ))),
        BlockAccess::None => Err(ManagerError::PermissionDenied(format!(
            "VIOS `{}` has not granted disk `{disk}` to partition `{client}` (parctl grant {resource} --to {client}, then parctl accept COOKIE --as {client})",
            vios.name
        ))),
    }
}

/// A grant of block resource `resource` (`VIOS/DISK`) to `client` ended:
/// unless `client` still holds another accepted grant of it, the VIOS (if
/// running) closes every connection serving that disk to that client. Not
/// waited for.
pub(crate) fn disconnect(
    partitions: &PartitionTable,
    grants: &GrantTable,
    resource: &str,
    client: &str,
) {
    let still = matches!(
        grants.block_access(resource, client),
        BlockAccess::Accepted(_)
    );
    let Some(block) = grants.block(resource) else {
        return;
    };
    if still {
        return;
    }
    let Some(writer) = partitions.writer(&block.owner) else {
        return;
    };
    let msg = ManagerToVios::ViosDisconnect {
        disk: block.disk.clone(),
        client: client.to_string(),
    };
    match writer.send(&msg, &[]) {
        Ok(()) => {
            tracing::info!(vios = %block.owner, disk = %block.disk, partition = %client, "grant revoked: VIOS told to disconnect the client")
        }
        Err(e) => {
            tracing::warn!(vios = %block.owner, disk = %block.disk, partition = %client, error = %e, "cannot tell the VIOS to disconnect a revoked client")
        }
    }
}

/// Resolve the `vios:` disks of `client`'s definition: check, broker a
/// socketpair per disk, send the VIOS its ends, set the disks' sources to
/// `vhost-user-fd:N` (N = [`FIRST_DISK_FD`], +1, ...). Returns the client's
/// ends, to be inherited as those fds. Called with the manager's lock held,
/// before the client's VMM is spawned.
pub(crate) fn broker(
    partitions: &PartitionTable,
    grants: &GrantTable,
    client: &str,
    definition: &mut PartitionDefinition,
) -> Result<Vec<OwnedFd>, ManagerError> {
    let mut ends = Vec::new();
    for disk in definition.disks.iter_mut().flatten() {
        let DiskSource::Vios {
            vios: vios_name,
            disk: export,
        } = &disk.source
        else {
            continue;
        };
        let what = format!("disk `{}`", disk.source);
        let (end, read_only) =
            connect_export(partitions, grants, client, vios_name, export, &what)?;
        let fd = FIRST_DISK_FD + ends.len() as i32;
        tracing::info!(partition = %client, vios = %vios_name, disk = %export, fd, read_only, "VIOS disk brokered");
        disk.source = DiskSource::VhostUserFd(fd);
        ends.push(end);
    }
    Ok(ends)
}

/// The dump disk of `client`'s `on_crash` (docs/dump.md), if it names a
/// VIOS export: brokered like a disk, but it must be granted read-write;
/// its source becomes `vhost-user-fd:FD`. Returns the client's end.
pub(crate) fn broker_dump(
    partitions: &PartitionTable,
    grants: &GrantTable,
    client: &str,
    definition: &mut PartitionDefinition,
    fd: i32,
) -> Result<Option<OwnedFd>, ManagerError> {
    let Some(on_crash) = definition.on_crash.as_mut() else {
        return Ok(None);
    };
    let Some(source @ DiskSource::Vios { .. }) = on_crash.dump.as_mut() else {
        return Ok(None);
    };
    let DiskSource::Vios { vios, disk } = source.clone() else {
        return Ok(None);
    };
    let what = format!("dump disk `{source}`");
    let (end, read_only) = connect_export(partitions, grants, client, &vios, &disk, &what)?;
    if read_only {
        return Err(ManagerError::StartFailed(
            client.to_string(),
            format!("{what}: the grant is read-only; a dump disk needs --rights rw"),
        ));
    }
    tracing::info!(partition = %client, %vios, %disk, fd, "dump disk brokered");
    *source = DiskSource::VhostUserFd(fd);
    Ok(Some(end))
}

/// Checks `client`'s grant of `vios_name`/`export` and that the VIOS runs,
/// then brokers a socketpair: the VIOS gets its end (`ViosConnect`), the
/// caller the client's and whether it is served read-only. `what` names
/// the disk in errors.
fn connect_export(
    partitions: &PartitionTable,
    grants: &GrantTable,
    client: &str,
    vios_name: &str,
    export: &str,
    what: &str,
) -> Result<(OwnedFd, bool), ManagerError> {
    let fail = |m: String| ManagerError::StartFailed(client.to_string(), m);
    let vios_definition = partitions
        .definition(vios_name)
        .ok_or_else(|| fail(format!("{what}: no partition named `{vios_name}`")))?;
    let Definition::Vios(vios_def) = vios_definition else {
        return Err(fail(format!(
            "{what}: partition `{vios_name}` is not a VIOS"
        )));
    };
    let read_only = check_block_grant(grants, vios_def, export, client).map_err(|e| match e {
        ManagerError::PermissionDenied(m) => {
            ManagerError::PermissionDenied(format!("partition `{client}` did not start: {m}"))
        }
        other => fail(other.to_string()),
    })?;
    let end = connect_running(partitions, client, vios_name, export, read_only, what)?;
    Ok((end, read_only))
}

/// The VIOS `vios_name` must run: a socketpair whose end it gets with
/// `ViosConnect {export, client, read_only}`; the client's end returned.
/// `what` names the disk in errors.
fn connect_running(
    partitions: &PartitionTable,
    client: &str,
    vios_name: &str,
    export: &str,
    read_only: bool,
    what: &str,
) -> Result<OwnedFd, ManagerError> {
    let fail = |m: String| ManagerError::StartFailed(client.to_string(), m);
    let writer = match (partitions.state(vios_name), partitions.writer(vios_name)) {
        (Some(PartitionState::Running), Some(w)) => w,
        (state, _) => {
            let state = state.unwrap_or(PartitionState::Defined);
            return Err(fail(format!(
                "{what}: VIOS `{vios_name}` is {state}, not running"
            )));
        }
    };
    let (client_end, vios_end) = UnixStream::pair().map_err(|source| ManagerError::Io {
        what: format!("socketpair for {what}"),
        source,
    })?;
    writer
        .send(
            &ManagerToVios::ViosConnect {
                disk: export.to_string(),
                client: client.to_string(),
                read_only,
            },
            &[vios_end.as_fd()],
        )
        .map_err(|e| fail(format!("cannot reach VIOS `{vios_name}`: {e}")))?;
    Ok(OwnedFd::from(client_end))
}

/// The image file behind VIOS export `vios_name`/`export` (from the VIOS's
/// definition), for reading a dump disk's table and cores.
pub(crate) fn export_image(
    partitions: &PartitionTable,
    vios_name: &str,
    export: &str,
) -> Result<std::path::PathBuf, ManagerError> {
    match partitions.definition(vios_name) {
        Some(Definition::Vios(v)) => v
            .disks
            .iter()
            .find(|d| d.id == export)
            .map(|d| d.path.clone())
            .ok_or_else(|| {
                ManagerError::BadRequest(format!("VIOS `{vios_name}` exports no disk `{export}`"))
            }),
        Some(_) => Err(ManagerError::BadRequest(format!(
            "partition `{vios_name}` is not a VIOS"
        ))),
        None => Err(ManagerError::NotFound(vios_name.to_string())),
    }
}

/// A VIOS (re)became ready: its earlier connections died with its previous
/// process. Broker a new socketpair for every disk of every running client
/// that names it, and hand the client's VMM its end with
/// `vhost_user_reconnect` (the VMM replays the in-flight requests).
/// Returns the (client, disk) pairs given a fresh connection.
pub(crate) fn on_ready(
    partitions: &PartitionTable,
    grants: &GrantTable,
    vios_name: &str,
) -> Vec<(String, String)> {
    let mut done = Vec::new();
    let Some(Definition::Vios(vios_def)) = partitions.definition(vios_name) else {
        return done;
    };
    // (client, client disk id, export)
    let mut wanted = Vec::new();
    for (client, def) in partitions.attached_partitions() {
        if client == vios_name {
            continue;
        }
        for disk in def.disks.iter().flatten() {
            if let DiskSource::Vios { vios, disk: export } = &disk.source {
                if vios == vios_name {
                    wanted.push((client.to_string(), disk.id.clone(), export.clone()));
                }
            }
        }
    }
    for (client, disk_id, export) in wanted {
        match rebroker(partitions, grants, vios_def, &client, &disk_id, &export) {
            Ok(()) => done.push((client, disk_id)),
            Err(e) => {
                tracing::warn!(partition = %client, vios = %vios_name, disk = %disk_id, error = %e, "VIOS disk not re-brokered")
            }
        }
    }
    // Dump disks (docs/dump.md): the VMM takes the new socket at its next
    // dump.
    let dumps: Vec<(String, String)> = partitions
        .attached_partitions()
        .into_iter()
        .filter_map(
            |(client, def)| match def.on_crash.as_ref()?.dump.as_ref()? {
                DiskSource::Vios { vios, disk } if vios == vios_name && client != vios_name => {
                    Some((client.to_string(), disk.clone()))
                }
                _ => None,
            },
        )
        .collect();
    for (client, export) in dumps {
        let sent = connect_export(partitions, grants, &client, vios_name, &export, "dump disk")
            .and_then(|(end, _)| {
                partitions
                    .writer(&client)
                    .ok_or_else(|| ManagerError::Control(client.clone(), "not attached".into()))?
                    .send(&ManagerToVmm::DumpReconnect, &[end.as_fd()])
                    .map_err(|e| ManagerError::Control(client.clone(), e.to_string()))
            });
        match sent {
            Ok(()) => {
                tracing::info!(partition = %client, vios = %vios_name, disk = %export, "dump disk re-brokered after the VIOS came back")
            }
            Err(e) => {
                tracing::warn!(partition = %client, vios = %vios_name, disk = %export, error = %e, "dump disk not re-brokered")
            }
        }
    }
    done
}

fn rebroker(
    partitions: &PartitionTable,
    grants: &GrantTable,
    vios: &ViosDefinition,
    client: &str,
    disk_id: &str,
    export: &str,
) -> Result<(), ManagerError> {
    let read_only = check_block_grant(grants, vios, export, client)?;
    let writer = |name: &str| {
        partitions
            .writer(name)
            .ok_or_else(|| ManagerError::Control(name.to_string(), "not attached".into()))
    };
    let (client_end, vios_end) = UnixStream::pair().map_err(|source| ManagerError::Io {
        what: "socketpair for a VIOS disk".into(),
        source,
    })?;
    writer(&vios.name)?
        .send(
            &ManagerToVios::ViosConnect {
                disk: export.to_string(),
                client: client.to_string(),
                read_only,
            },
            &[vios_end.as_fd()],
        )
        .map_err(|e| ManagerError::Control(vios.name.clone(), e.to_string()))?;
    writer(client)?
        .send(
            &ManagerToVmm::VhostUserReconnect {
                disk: disk_id.to_string(),
            },
            &[client_end.as_fd()],
        )
        .map_err(|e| ManagerError::Control(client.to_string(), e.to_string()))?;
    tracing::info!(partition = %client, vios = %vios.name, disk = %disk_id, "VIOS disk re-brokered after the VIOS came back");
    Ok(())
}

/// A socketpair to paging device `device` for `client`: the VIOS gets its
/// end (`ViosConnect`, read-write), the caller the client's, to be
/// inherited as fd `fd`. The VIOS must run and be attached.
pub(crate) fn broker_paging(
    partitions: &PartitionTable,
    client: &str,
    device: &PagingDevice,
    fd: i32,
) -> Result<OwnedFd, ManagerError> {
    let end = connect_running(
        partitions,
        client,
        &device.vios,
        &device.disk,
        false,
        &format!("paging device {device}"),
    )?;
    tracing::info!(partition = %client, %device, fd, "paging device brokered");
    Ok(end)
}

/// VIOS `device.vios` came back: two fresh socketpairs to the paging
/// device of running partition `client` (its pager's fault thread and
/// evictor), each end sent with `PagingReconnect`.
pub(crate) fn rebroker_paging(
    partitions: &PartitionTable,
    client: &str,
    device: &PagingDevice,
) -> Result<(), ManagerError> {
    let writer = partitions
        .writer(client)
        .ok_or_else(|| ManagerError::Control(client.to_string(), "not attached".into()))?;
    for evictor in [false, true] {
        let end = broker_paging(partitions, client, device, -1)?;
        writer
            .send(&ManagerToVmm::PagingReconnect { evictor }, &[end.as_fd()])
            .map_err(|e| ManagerError::Control(client.to_string(), e.to_string()))?;
    }
    tracing::info!(partition = %client, %device, "paging device re-brokered after the VIOS came back");
    Ok(())
}
