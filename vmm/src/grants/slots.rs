//! Granted segments as guest memory: where each goes in the grant windows
//! (checked or chosen), which KVM memory slot it takes, and the host mmap of
//! its memfd behind that slot.
//!
//! [`Slots`] is plain state behind [`super::GrantMaps`]' lock; every method
//! runs with that lock held, so a slot is never half made or half removed
//! when another thread looks.

use super::{GRANT_WINDOW_SIZE, GRANT_WINDOW_START, HIGH_WINDOW_END};
use crate::memory::FIRST_ADDR_PAST_32BITS;
use kvm_ioctls::VmFd;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Grant slots are numbered from here (RAM uses the first few).
const FIRST_GRANT_SLOT: u32 = 8;
const PAGE: u64 = 4096;
/// Automatic placement aligns mappings to 2 MiB.
pub(super) const PLACE_ALIGN: u64 = 2 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("size {0:#x} is not a positive multiple of 4 KiB")]
    Size(u64),
    #[error("gpa {0:#x} is not 4 KiB aligned")]
    Unaligned(u64),
    #[error("{gpa:#x}+{size:#x} is outside the grant windows (0xe0000000-0xefffffff, {high:#x}-{HIGH_WINDOW_END:#x}): it would overlap RAM or devices")]
    Outside { gpa: u64, size: u64, high: u64 },
    #[error("{gpa:#x}+{size:#x} overlaps mapping `{other}` at {at:#x}")]
    Overlap {
        gpa: u64,
        size: u64,
        other: String,
        at: u64,
    },
    #[error("no room for {0:#x} bytes in the grant windows")]
    NoRoom(u64),
    #[error("mapping `{0}` exists already")]
    Duplicate(String),
    #[error("no free KVM memory slot (at most {0})")]
    NoSlot(u32),
    #[error("the memory is {have:#x} bytes, smaller than {want:#x}")]
    Short { have: u64, want: u64 },
    #[error("mmap failed: {0}")]
    Mmap(std::io::Error),
    #[error("KVM_SET_USER_MEMORY_REGION failed: {0}")]
    Kvm(kvm_ioctls::Error),
}

impl MapError {
    /// Whether the address was the problem (the manager's `gpa_conflict`).
    pub fn is_conflict(&self) -> bool {
        matches!(self, MapError::Outside { .. } | MapError::Overlap { .. })
    }
}

/// One live mapping.
pub(super) struct Mapping {
    pub key: String,
    pub gpa: u64,
    pub size: u64,
    slot: u32,
    pub read_only: bool,
    host: usize,
    /// The memory, kept to hand back to a restarted manager.
    pub fd: OwnedFd,
}

/// The live mappings of one partition and the slots they use.
pub(super) struct Slots {
    vm: Arc<VmFd>,
    /// Where the high window starts (above RAM).
    pub high_start: u64,
    max_slots: u32,
    /// Live mappings by guest address.
    pub live: BTreeMap<u64, Mapping>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

impl Slots {
    /// `ram_bytes` of RAM fix where the high window starts; `max_slots` is
    /// KVM's memory slot limit.
    pub fn new(vm: Arc<VmFd>, ram_bytes: u64, max_slots: usize) -> Self {
        let ram_top = crate::memory::ram_ranges(ram_bytes)
            .iter()
            .map(|(a, l)| a.0 + l)
            .max()
            .unwrap_or(0);
        let high_start = ram_top
            .max(FIRST_ADDR_PAST_32BITS)
            .next_multiple_of(1 << 30);
        Slots {
            vm,
            high_start,
            max_slots: u32::try_from(max_slots).unwrap_or(u32::MAX),
            live: BTreeMap::new(),
            free_slots: Vec::new(),
            next_slot: FIRST_GRANT_SLOT,
        }
    }

    fn windows(&self) -> [(u64, u64); 2] {
        [
            (GRANT_WINDOW_START, GRANT_WINDOW_START + GRANT_WINDOW_SIZE),
            (self.high_start, HIGH_WINDOW_END),
        ]
    }

    /// Checks a range against the windows and the live mappings.
    fn check_range(&self, gpa: u64, size: u64) -> Result<(), MapError> {
        let windows = self.windows();
        let high = windows[1].0;
        let end = gpa
            .checked_add(size)
            .ok_or(MapError::Outside { gpa, size, high })?;
        if !windows.iter().any(|&(s, e)| gpa >= s && end <= e) {
            return Err(MapError::Outside { gpa, size, high });
        }
        if let Some(m) = self
            .live
            .values()
            .find(|m| gpa < m.gpa + m.size && m.gpa < end)
        {
            return Err(MapError::Overlap {
                gpa,
                size,
                other: m.key.clone(),
                at: m.gpa,
            });
        }
        Ok(())
    }

    /// First fit, 2 MiB aligned, low window first.
    fn place(&self, size: u64) -> Option<u64> {
        for (start, end) in self.windows() {
            let mut at = start;
            for m in self.live.values() {
                if m.gpa + m.size <= at {
                    continue;
                }
                if m.gpa >= at.checked_add(size)? {
                    break;
                }
                at = (m.gpa + m.size).next_multiple_of(PLACE_ALIGN);
            }
            if at.checked_add(size).is_some_and(|e| e <= end) {
                return Some(at);
            }
        }
        None
    }

    /// Maps `size` bytes of `fd` at `gpa` (or a place chosen here) as a
    /// new KVM slot, read-only if asked. Returns the address.
    pub fn map(
        &mut self,
        key: &str,
        fd: OwnedFd,
        gpa: Option<u64>,
        size: u64,
        read_only: bool,
    ) -> Result<u64, MapError> {
        if size == 0 || !size.is_multiple_of(PAGE) {
            return Err(MapError::Size(size));
        }
        let have = std::fs::File::from(fd.try_clone().map_err(MapError::Mmap)?)
            .metadata()
            .map_err(MapError::Mmap)?
            .len();
        if have < size {
            return Err(MapError::Short { have, want: size });
        }
        if self.live.values().any(|m| m.key == key) {
            return Err(MapError::Duplicate(key.into()));
        }
        let gpa = match gpa {
            Some(g) if !g.is_multiple_of(PAGE) => return Err(MapError::Unaligned(g)),
            Some(g) => {
                self.check_range(g, size)?;
                g
            }
            None => self.place(size).ok_or(MapError::NoRoom(size))?,
        };
        let slot = match self.free_slots.pop() {
            Some(s) => s,
            None if self.next_slot < self.max_slots => {
                self.next_slot += 1;
                self.next_slot - 1
            }
            None => return Err(MapError::NoSlot(self.max_slots)),
        };
        let prot = libc::PROT_READ | if read_only { 0 } else { libc::PROT_WRITE };
        // SAFETY: a fresh shared mapping of a descriptor we hold, at an
        // address the kernel chooses; the result is checked.
        let host = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if host == libc::MAP_FAILED {
            self.free_slots.push(slot);
            return Err(MapError::Mmap(std::io::Error::last_os_error()));
        }
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            flags: if read_only {
                kvm_bindings::KVM_MEM_READONLY
            } else {
                0
            },
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: `host` is a mapping of `size` bytes that stays until
        // `unmap` removes this slot first (or the process ends).
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            // SAFETY: unmapping what was mapped just above, never shared.
            unsafe { libc::munmap(host, size as usize) };
            self.free_slots.push(slot);
            return Err(MapError::Kvm(e));
        }
        self.live.insert(
            gpa,
            Mapping {
                key: key.into(),
                gpa,
                size,
                slot,
                read_only,
                host: host as usize,
                fd,
            },
        );
        tracing::info!(%key, gpa = format_args!("{gpa:#x}"), size, read_only, slot, "grant mapped");
        Ok(gpa)
    }

    /// Removes mapping `key` and returns it (`None`: already gone). Once
    /// this returns, KVM has dropped the slot and the memory is unmapped.
    pub fn unmap(&mut self, key: &str) -> Result<Option<Mapping>, MapError> {
        let Some(gpa) = self.live.values().find(|m| m.key == key).map(|m| m.gpa) else {
            return Ok(None);
        };
        let Some(m) = self.live.remove(&gpa) else {
            return Ok(None);
        };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: m.slot,
            flags: 0,
            guest_phys_addr: m.gpa,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: deleting a slot this object created; KVM stops using the
        // memory before the ioctl returns.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            self.live.insert(gpa, m);
            return Err(MapError::Kvm(e));
        }
        // SAFETY: the mapping was made by `map` with this size and no slot
        // refers to it any more.
        unsafe { libc::munmap(m.host as *mut libc::c_void, m.size as usize) };
        self.free_slots.push(m.slot);
        tracing::info!(key, gpa = format_args!("{:#x}", m.gpa), "grant unmapped");
        Ok(Some(m))
    }

    /// The live mapping containing `gpa`.
    pub fn find(&self, gpa: u64) -> Option<&Mapping> {
        self.live
            .range(..=gpa)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| gpa < m.gpa + m.size)
    }

    /// Copies guest memory at `gpa` out of a live mapping; false if the
    /// access does not lie inside one.
    pub fn read(&self, gpa: u64, data: &mut [u8]) -> bool {
        let Some(m) = self
            .find(gpa)
            .filter(|m| gpa + data.len() as u64 <= m.gpa + m.size)
        else {
            return false;
        };
        let offset = (gpa - m.gpa) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            // SAFETY: `host` maps `size` bytes (checked above: the access
            // lies inside) while the mapping is live, and the caller's lock
            // keeps it live; volatile because the guest and other
            // partitions write it concurrently.
            *b = unsafe { std::ptr::read_volatile((m.host as *const u8).add(offset + i)) };
        }
        true
    }
}
