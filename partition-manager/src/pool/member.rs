//! A member of the pool (a running or starting shared-memory partition)
//! and what a definition asks of the pool.

use super::targets;
use crate::partitions::PartitionTable;
use parvm_config::{Definition, DiskSource, MemorySpec, PartitionDefinition, MIN_RESIDENT_MIB};
use parvm_protocol::{MemoryReport, PagingDevice, PAGES_PER_MIB};
use std::time::{Duration, Instant};

/// A partition whose VMM reported no new fault (page-in or first touch)
/// for this long is *idle*: its goal is capped near what it holds.
pub const IDLE_AFTER: Duration = Duration::from_secs(10);

/// A running (or starting) shared-memory partition.
pub(super) struct Member {
    pub(super) device: PagingDevice,
    pub(super) weight: u8,
    pub(super) logical: u64,
    pub(super) min: u64,
    pub(super) goal: u64,
    /// What its VMM has been told (before the spawn: what it will start
    /// with).
    pub(super) target: u64,
    /// Last reported resident (before any report of a VMM found after a
    /// manager restart: its logical size, the most it can hold).
    pub(super) resident: u64,
    pub(super) spawned: bool,
    /// Found running after a manager restart, not reported yet.
    pub(super) recovered: bool,
    pub(super) admitted: Instant,
    pub(super) report: Option<MemoryReport>,
    /// Page-ins plus first touches at the last change, and since when
    /// they have not moved.
    pub(super) faults: u64,
    pub(super) quiet_since: Instant,
}

impl Member {
    pub(super) fn holds(&self) -> u64 {
        self.target.max(self.resident)
    }

    /// Its cap: the logical size, or near what it holds once idle.
    pub(super) fn cap(&self, now: Instant) -> u64 {
        let idle = self.report.is_some() && now.duration_since(self.quiet_since) >= IDLE_AFTER;
        match idle {
            true => {
                let slack = (self.logical / 16).max(4 * PAGES_PER_MIB);
                targets::idle_cap(self.resident, slack, self.min, self.logical)
            }
            false => self.logical,
        }
    }
}

/// What a shared-memory definition asks of the pool.
pub(super) struct Wants {
    pub(super) logical: u64,
    pub(super) weight: u8,
    /// The device its definition names, if any.
    pub(super) paging: Option<PagingDevice>,
}

pub(super) fn wants(def: &PartitionDefinition) -> Option<Wants> {
    let (logical_mib, shared) = MemorySpec::resolve(def.memory.as_deref(), def.memory_mib).ok()?;
    let shared = shared?;
    let logical = logical_mib.unwrap_or(parvm_config::DEFAULT_MEMORY_MIB) * PAGES_PER_MIB;
    let paging = match shared.paging {
        Some(DiskSource::Vios { vios, disk }) => Some(PagingDevice { vios, disk }),
        _ => None,
    };
    Some(Wants {
        logical,
        weight: shared.weight,
        paging,
    })
}

pub(super) fn mib(pages: u64) -> String {
    match pages % PAGES_PER_MIB {
        0 => format!("{} MiB", pages / PAGES_PER_MIB),
        _ => format!("{:.1} MiB", pages as f64 / PAGES_PER_MIB as f64),
    }
}

pub(super) fn min_pages(logical: u64) -> u64 {
    (MIN_RESIDENT_MIB * PAGES_PER_MIB).min(logical)
}

/// The partitions (other than `except`) with `device` among their disks.
pub(super) fn disk_users(
    partitions: &PartitionTable,
    device: &PagingDevice,
    except: &str,
) -> Vec<String> {
    partitions
        .names()
        .into_iter()
        .filter(|n| n != except)
        .filter(|n| match partitions.definition(n) {
            Some(Definition::Partition(def)) => def.disks.iter().flatten().any(|d| {
                matches!(&d.source, DiskSource::Vios { vios, disk }
                    if *vios == device.vios && *disk == device.disk)
            }),
            _ => false,
        })
        .collect()
}
