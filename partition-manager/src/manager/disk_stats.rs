//! The VIOS partitions' export figures: asked for every
//! [`DISK_STATS_TICK`] (`ManagerToVios::Stats`), kept as last reported
//! (`ToManager::DiskStats`) for `/metrics`. A VIOS that is gone keeps its
//! last figures until it is undefined or reports again (its counters then
//! start over, as a restarted process's do).

use super::Manager;
use parvm_protocol::{DiskStats, ManagerToVios};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often running VIOS partitions are asked for their figures.
pub const DISK_STATS_TICK: Duration = Duration::from_secs(2);

impl Manager {
    pub(super) fn start_disk_stats_tick(self: &Arc<Self>) {
        let weak: Weak<Manager> = Arc::downgrade(self);
        crate::process::spawn_thread("disk-stats", move || loop {
            std::thread::sleep(DISK_STATS_TICK);
            let Some(mgr) = weak.upgrade() else { return };
            mgr.ask_disk_stats();
        });
    }

    /// Sends `Stats` to every running VIOS.
    pub fn ask_disk_stats(&self) {
        let state = self.lock();
        for (name, writer) in state.partitions.running_vios() {
            if let Err(e) = writer.send(&ManagerToVios::Stats, &[]) {
                tracing::debug!(partition = %name, error = %e, "cannot ask the VIOS for its figures");
            }
        }
    }

    pub(super) fn disk_stats_report(&self, name: &str, generation: u64, disks: Vec<DiskStats>) {
        if !self.lock().partitions.is_current(name, generation) {
            return;
        }
        let mut all = self.disk_stats.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(name.to_string(), disks);
    }

    /// Each VIOS's last reported export figures, by VIOS name (only those
    /// still defined).
    pub fn disk_stats(&self) -> Vec<(String, Vec<DiskStats>)> {
        let defined = self.lock().partitions.names();
        let mut all = self.disk_stats.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|name, _| defined.contains(name));
        all.iter().map(|(n, d)| (n.clone(), d.clone())).collect()
    }
}
