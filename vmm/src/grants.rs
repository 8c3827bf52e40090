//! Shared memory from other partitions (grant cookies, DESIGN.md) as the
//! guest sees it: segments mapped as extra KVM memory slots in the *grant
//! windows*, and the hcall device through which the guest grants, accepts,
//! regrants, revokes and copies (docs/hcall.md).
//!
//! Windows (guest physical):
//!
//! | range | what |
//! |---|---|
//! | `0xe000_0000 - 0xefff_ffff` | low grant window, in the MMIO hole (reachable by 32-bit guests) |
//! | `0xf000_0000 - 0xf000_0fff` | the hcall page |
//! | top of RAM above 4 GiB (at least 4 GiB) `- 2^46` | high grant window |
//!
//! Data flows: the control thread gets `Map` (with a memfd) or `Unmap` from
//! the manager and calls [`GrantMaps::map`] / [`GrantMaps::unmap`], then
//! acknowledges. Guest accesses that exit to the VMM inside a window (an
//! unmapped address, or a write to a read-only slot) reach the
//! [`GrantWindow`] bus device, which answers reads with `0xff` bytes,
//! ignores writes and reports accesses to revoked mappings and writes to
//! read-only ones to the manager through the [`ManagerLink`]. The
//! [`HcallDevice`] sends the guest's calls on the same link and holds the
//! vCPU until the answer arrives.

use crate::devices::bus::{lock, BusDevice};
use crate::interrupts::Interrupts;
use crate::memory::FIRST_ADDR_PAST_32BITS;
use kvm_ioctls::VmFd;
use parvm_protocol::grant::status;
use parvm_protocol::{GrantCookie, Hcall, HcallOutcome, Rights, VmmMessage};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The low grant window (in the MMIO hole, below the hcall page).
pub const GRANT_WINDOW_START: u64 = 0xe000_0000;
pub const GRANT_WINDOW_SIZE: u64 = 0x1000_0000;
/// The hcall page.
pub const HCALL_BASE: u64 = 0xf000_0000;
pub const HCALL_SIZE: u64 = 0x1000;
/// The doorbell page: register `n` (8 bytes) at `DOORBELL_BASE + 8 * n`.
pub const DOORBELL_BASE: u64 = 0xf000_1000;
/// End of the high grant window (46 address bits).
pub const HIGH_WINDOW_END: u64 = 1 << 46;
/// Grant slots are numbered from here (RAM uses the first few).
const FIRST_GRANT_SLOT: u32 = 8;
/// Revoked mappings remembered for fault reports.
const GONE_REMEMBERED: usize = 64;
/// At most one fault report per mapping this often.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// How long an hcall may wait for the manager.
const HCALL_TIMEOUT: Duration = Duration::from_secs(10);
const PAGE: u64 = 4096;
/// Automatic placement aligns mappings to 2 MiB.
const PLACE_ALIGN: u64 = 2 << 20;

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
    #[error("doorbell `{id}`: register {ring} does not exist (0-{max})")]
    Ring { id: String, ring: u32, max: u32 },
    #[error("doorbell `{id}`: {source}")]
    Interrupt {
        id: String,
        source: crate::interrupts::InterruptError,
    },
    #[error("doorbell `{id}`: needs exactly one of ring, gsi and vector")]
    DoorbellEnd { id: String },
    #[error("doorbell `{id}`: {what} failed: {source}")]
    Wire {
        id: String,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
}

impl MapError {
    /// Whether the address was the problem (the manager's `gpa_conflict`).
    pub fn is_conflict(&self) -> bool {
        matches!(self, MapError::Outside { .. } | MapError::Overlap { .. })
    }
}

struct Mapping {
    key: String,
    gpa: u64,
    size: u64,
    slot: u32,
    read_only: bool,
    host: usize,
    faults: u64,
    reported: Option<Instant>,
    /// The memory, kept to hand back to a restarted manager.
    fd: OwnedFd,
}

struct Gone {
    key: String,
    gpa: u64,
    size: u64,
    faults: u64,
    reported: Option<Instant>,
}

#[derive(Default)]
struct MapsInner {
    /// Live mappings by guest address.
    live: BTreeMap<u64, Mapping>,
    /// Recently unmapped ranges, newest last.
    gone: VecDeque<Gone>,
    free_slots: Vec<u32>,
    next_slot: u32,
}

/// Sends to the partition manager; false if there is none.
pub type Sender = Box<dyn Fn(VmmMessage) -> bool + Send + Sync>;

/// The VMM's link to the manager for fault reports and hcalls.
#[derive(Default)]
pub struct ManagerLink {
    sender: Mutex<Option<Sender>>,
    results: Mutex<HashMap<u64, HcallOutcome>>,
    arrived: Condvar,
    seq: AtomicU64,
}

impl ManagerLink {
    pub fn set_sender(&self, s: Sender) {
        *lock(&self.sender) = Some(s);
    }

    fn send(&self, msg: VmmMessage) -> bool {
        lock(&self.sender).as_ref().is_some_and(|s| s(msg))
    }

    /// An hcall's answer arrived.
    pub fn hcall_done(&self, seq: u64, outcome: HcallOutcome) {
        lock(&self.results).insert(seq, outcome);
        self.arrived.notify_all();
    }

    /// Sends an hcall and waits for its answer.
    pub fn call(&self, call: Hcall) -> HcallOutcome {
        let fail = |status| HcallOutcome {
            status,
            result0: 0,
            result1: 0,
            cookie: None,
        };
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.send(VmmMessage::Hcall { seq, call }) {
            return fail(status::NO_MANAGER);
        }
        let deadline = Instant::now() + HCALL_TIMEOUT;
        let mut results = lock(&self.results);
        loop {
            if let Some(o) = results.remove(&seq) {
                return o;
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(seq, "hcall: no answer from the partition manager");
                return fail(status::NO_MANAGER);
            }
            results = match self.arrived.wait_timeout(results, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// The grant mappings of one partition.
pub struct GrantMaps {
    vm: Arc<VmFd>,
    high_start: u64,
    max_slots: u32,
    /// Where doorbells get their interrupt lines.
    interrupts: Arc<Interrupts>,
    inner: Mutex<MapsInner>,
    /// Wired doorbell eventfds, kept open for the VM's life.
    doorbells: Mutex<Vec<(String, vmm_sys_util::eventfd::EventFd)>>,
    pub link: ManagerLink,
}

impl GrantMaps {
    /// `ram_bytes` of RAM fix where the high window starts; `max_slots` is
    /// KVM's memory slot limit; doorbells ask `interrupts` for their lines.
    pub fn new(
        vm: Arc<VmFd>,
        ram_bytes: u64,
        max_slots: usize,
        interrupts: Arc<Interrupts>,
    ) -> Self {
        let ram_top = crate::memory::ram_ranges(ram_bytes)
            .iter()
            .map(|(a, l)| a.0 + l)
            .max()
            .unwrap_or(0);
        let high_start = ram_top
            .max(FIRST_ADDR_PAST_32BITS)
            .next_multiple_of(1 << 30);
        GrantMaps {
            vm,
            high_start,
            max_slots: u32::try_from(max_slots).unwrap_or(u32::MAX),
            interrupts,
            doorbells: Mutex::new(Vec::new()),
            inner: Mutex::new(MapsInner {
                next_slot: FIRST_GRANT_SLOT,
                ..Default::default()
            }),
            link: ManagerLink::default(),
        }
    }

    /// Where the high window starts.
    pub fn high_start(&self) -> u64 {
        self.high_start
    }

    fn windows(&self) -> [(u64, u64); 2] {
        [
            (GRANT_WINDOW_START, GRANT_WINDOW_START + GRANT_WINDOW_SIZE),
            (self.high_start, HIGH_WINDOW_END),
        ]
    }

    /// Checks a range against the windows and the live mappings.
    fn check_range(
        inner: &MapsInner,
        windows: &[(u64, u64)],
        gpa: u64,
        size: u64,
    ) -> Result<(), MapError> {
        let high = windows[1].0;
        let end = gpa
            .checked_add(size)
            .ok_or(MapError::Outside { gpa, size, high })?;
        if !windows.iter().any(|&(s, e)| gpa >= s && end <= e) {
            return Err(MapError::Outside { gpa, size, high });
        }
        if let Some(m) = inner
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
    fn place(inner: &MapsInner, windows: &[(u64, u64)], size: u64) -> Option<u64> {
        for &(start, end) in windows {
            let mut at = start;
            for m in inner.live.values() {
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
        &self,
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
        let windows = self.windows();
        let mut inner = lock(&self.inner);
        if inner.live.values().any(|m| m.key == key) {
            return Err(MapError::Duplicate(key.into()));
        }
        let gpa = match gpa {
            Some(g) if !g.is_multiple_of(PAGE) => return Err(MapError::Unaligned(g)),
            Some(g) => {
                Self::check_range(&inner, &windows, g, size)?;
                g
            }
            None => Self::place(&inner, &windows, size).ok_or(MapError::NoRoom(size))?,
        };
        let slot = match inner.free_slots.pop() {
            Some(s) => s,
            None if inner.next_slot < self.max_slots => {
                inner.next_slot += 1;
                inner.next_slot - 1
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
            inner.free_slots.push(slot);
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
            inner.free_slots.push(slot);
            return Err(MapError::Kvm(e));
        }
        inner
            .gone
            .retain(|g| g.gpa + g.size <= gpa || gpa + size <= g.gpa);
        inner.live.insert(
            gpa,
            Mapping {
                key: key.into(),
                gpa,
                size,
                slot,
                read_only,
                host: host as usize,
                faults: 0,
                reported: None,
                fd,
            },
        );
        tracing::info!(%key, gpa = format_args!("{gpa:#x}"), size, read_only, slot, "grant mapped");
        Ok(gpa)
    }

    /// Removes mapping `key`: once this returns the guest can no longer
    /// reach the memory (KVM has dropped the slot). Unknown keys are fine
    /// (already gone).
    pub fn unmap(&self, key: &str) -> Result<(), MapError> {
        let mut inner = lock(&self.inner);
        let Some(gpa) = inner.live.values().find(|m| m.key == key).map(|m| m.gpa) else {
            return Ok(());
        };
        let Some(m) = inner.live.remove(&gpa) else {
            return Ok(());
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
            inner.live.insert(gpa, m);
            return Err(MapError::Kvm(e));
        }
        // SAFETY: the mapping was made by `map` with this size and no slot
        // refers to it any more.
        unsafe { libc::munmap(m.host as *mut libc::c_void, m.size as usize) };
        inner.free_slots.push(m.slot);
        tracing::info!(key, gpa = format_args!("{:#x}", m.gpa), "grant unmapped");
        inner.gone.push_back(Gone {
            key: m.key,
            gpa: m.gpa,
            size: m.size,
            faults: m.faults,
            reported: None,
        });
        while inner.gone.len() > GONE_REMEMBERED {
            inner.gone.pop_front();
        }
        Ok(())
    }

    /// A read that exited although the address is mapped (KVM may emulate
    /// an access to a read-only slot in userspace): served from the
    /// mapping. False if `gpa` is not inside a live mapping.
    pub fn read_live(&self, gpa: u64, data: &mut [u8]) -> bool {
        let inner = lock(&self.inner);
        let Some(m) = inner
            .live
            .range(..=gpa)
            .next_back()
            .map(|(_, m)| m)
            .filter(|m| gpa + data.len() as u64 <= m.gpa + m.size)
        else {
            return false;
        };
        let offset = (gpa - m.gpa) as usize;
        for (i, b) in data.iter_mut().enumerate() {
            // SAFETY: `host` maps `size` bytes (checked above: the access
            // lies inside) while the mapping is live, and the lock keeps it
            // live; volatile because the guest and other partitions write
            // it concurrently.
            *b = unsafe { std::ptr::read_volatile((m.host as *const u8).add(offset + i)) };
        }
        true
    }

    /// A guest access that exited to the VMM inside a window: a write to a
    /// read-only mapping, or any access to a revoked one, is counted and
    /// reported (at most every [`REPORT_INTERVAL`] per mapping).
    pub fn fault(&self, gpa: u64, write: bool) {
        let report = {
            let mut inner = lock(&self.inner);
            let now = Instant::now();
            let due = |last: &mut Option<Instant>| {
                let d = last.is_none_or(|t| now.duration_since(t) >= REPORT_INTERVAL);
                if d {
                    *last = Some(now);
                }
                d
            };
            let live = inner
                .live
                .range_mut(..=gpa)
                .next_back()
                .map(|(_, m)| m)
                .filter(|m| gpa < m.gpa + m.size);
            if let Some(m) = live.filter(|_| write) {
                m.faults += 1;
                let count = m.faults;
                if m.faults == 1 {
                    tracing::warn!(key = %m.key, gpa = format_args!("{gpa:#x}"), read_only = m.read_only, "guest write to a read-only grant refused");
                }
                due(&mut m.reported).then(|| VmmMessage::Fault {
                    key: m.key.clone(),
                    gpa,
                    write,
                    count,
                })
            } else if let Some(g) = inner
                .gone
                .iter_mut()
                .rev()
                .find(|g| gpa >= g.gpa && gpa < g.gpa + g.size)
            {
                g.faults += 1;
                let count = g.faults;
                if g.faults == 1 {
                    tracing::warn!(key = %g.key, gpa = format_args!("{gpa:#x}"), write, "guest access to a revoked grant");
                }
                due(&mut g.reported).then(|| VmmMessage::Fault {
                    key: g.key.clone(),
                    gpa,
                    write,
                    count,
                })
            } else {
                tracing::debug!(
                    gpa = format_args!("{gpa:#x}"),
                    write,
                    "access to an unmapped grant window address"
                );
                None
            }
        };
        if let Some(msg) = report {
            self.link.send(msg);
        }
    }

    /// Wires one end of doorbell `id`: `ring`: guest writes to that
    /// doorbell register signal `fd` (ioeventfd, no exit to the VMM); `gsi`:
    /// signalling `fd` interrupts the guest (irqfd).
    pub fn doorbell(
        &self,
        id: &str,
        fd: OwnedFd,
        ring: Option<u32>,
        gsi: Option<u32>,
        vector: Option<u8>,
    ) -> Result<(), MapError> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let max = parvm_protocol::grant::DOORBELLS;
        // SAFETY: `fd` is an eventfd the manager created and sent us; the
        // EventFd takes sole ownership of the descriptor.
        let evt = unsafe { vmm_sys_util::eventfd::EventFd::from_raw_fd(fd.into_raw_fd()) };
        let wire = |what, source| MapError::Wire {
            id: id.into(),
            what,
            source,
        };
        let irq = |source| MapError::Interrupt {
            id: id.into(),
            source,
        };
        let owner = format!("doorbell {id}");
        match (ring, gsi, vector) {
            (Some(ring), None, None) => {
                if ring >= max {
                    return Err(MapError::Ring {
                        id: id.into(),
                        ring,
                        max: max - 1,
                    });
                }
                let addr = kvm_ioctls::IoEventAddress::Mmio(DOORBELL_BASE + 8 * u64::from(ring));
                self.vm
                    .register_ioevent(&evt, &addr, kvm_ioctls::NoDatamatch)
                    .map_err(|e| wire("KVM_IOEVENTFD", e))?;
            }
            (None, Some(gsi), None) => {
                let gsi = self.interrupts.share_pin(gsi, &owner).map_err(irq)?;
                self.interrupts.connect(&evt, gsi).map_err(irq)?;
            }
            (None, None, Some(vector)) => {
                let gsi = self.interrupts.add_msi(vector, &owner).map_err(irq)?;
                self.interrupts.connect(&evt, gsi).map_err(irq)?;
            }
            _ => return Err(MapError::DoorbellEnd { id: id.into() }),
        }
        tracing::info!(doorbell = id, ?ring, ?gsi, ?vector, "doorbell wired");
        lock(&self.doorbells).push((id.to_string(), evt));
        Ok(())
    }

    /// Every live mapping's key and a duplicate of its memory descriptor,
    /// and every wired doorbell's eventfd as `doorbell:ID` (for a manager
    /// that restarted and lost its own).
    pub fn held(&self) -> Vec<(String, Option<u64>, OwnedFd)> {
        let mut out: Vec<(String, Option<u64>, OwnedFd)> = lock(&self.inner)
            .live
            .values()
            .filter_map(|m| Some((m.key.clone(), Some(m.gpa), m.fd.try_clone().ok()?)))
            .collect();
        for (id, evt) in lock(&self.doorbells).iter() {
            // SAFETY: dup(2) of a descriptor the EventFd keeps open; the
            // result is checked and owned by the OwnedFd.
            let fd = unsafe { libc::dup(evt.as_raw_fd()) };
            if fd >= 0 {
                // SAFETY: a fresh descriptor owned by nobody else.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                out.push((format!("doorbell:{id}"), None, fd));
            }
        }
        out
    }

    /// The live mappings: (key, gpa, size, read-only).
    pub fn mappings(&self) -> Vec<(String, u64, u64, bool)> {
        lock(&self.inner)
            .live
            .values()
            .map(|m| (m.key.clone(), m.gpa, m.size, m.read_only))
            .collect()
    }
}

/// A grant window on the MMIO bus: sees only what exits (see the module
/// documentation).
pub struct GrantWindow {
    pub maps: Arc<GrantMaps>,
    pub base: u64,
}

impl BusDevice for GrantWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.maps.read_live(self.base + offset, data) {
            data.fill(0xff);
            self.maps.fault(self.base + offset, false);
        }
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        self.maps.fault(self.base + offset, true);
    }
}

/// hcall page registers (docs/hcall.md).
pub mod regs {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const OP: u64 = 0x08;
    pub const STATUS: u64 = 0x0c;
    pub const ARG0: u64 = 0x10;
    pub const ARG1: u64 = 0x18;
    pub const ARG2: u64 = 0x20;
    pub const ARG3: u64 = 0x28;
    pub const RESULT0: u64 = 0x30;
    pub const RESULT1: u64 = 0x38;
    pub const COOKIE: u64 = 0x40;
    pub const COOKIE2: u64 = 0x50;
    pub const NAME: u64 = 0x60;
    pub const NAME_LEN: u64 = 64;
    /// Registers end here; the rest of the page reads 0.
    pub const END: u64 = 0xa0;
    /// "PVHC" little-endian.
    pub const MAGIC_VALUE: u32 = 0x4348_5650;
    pub const ABI_VERSION: u32 = 1;
}

/// hcall opcodes (docs/hcall.md).
pub mod op {
    pub const GRANT: u32 = 1;
    pub const ACCEPT: u32 = 2;
    pub const REGRANT: u32 = 3;
    pub const REVOKE: u32 = 4;
    pub const COPY: u32 = 5;
    pub const SEGMENT_CREATE: u32 = 6;
}

/// Rights as the guest encodes them.
fn rights(v: u64) -> Option<Rights> {
    match v {
        1 => Some(Rights::Ro),
        2 => Some(Rights::Rw),
        _ => None,
    }
}

/// Decodes the call the guest asked for from the register file; an hcall
/// status on bad input.
pub fn decode_call(opcode: u32, file: &[u8; regs::END as usize]) -> Result<Hcall, u32> {
    let u64_at = |o: u64| {
        let o = o as usize;
        let mut b = [0u8; 8];
        b.copy_from_slice(&file[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let cookie_at = |o: u64| GrantCookie::from_halves(u64_at(o), u64_at(o + 8));
    let name = || {
        let raw = &file[regs::NAME as usize..(regs::NAME + regs::NAME_LEN) as usize];
        let len = raw
            .iter()
            .position(|&b| b == 0)
            .ok_or(status::BAD_ARGUMENT)?;
        let s = std::str::from_utf8(&raw[..len]).map_err(|_| status::BAD_ARGUMENT)?;
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(s.to_string())
        } else {
            Err(status::BAD_ARGUMENT)
        }
    };
    let rights_arg = || rights(u64_at(regs::ARG1)).ok_or(status::BAD_ARGUMENT);
    match opcode {
        op::GRANT => Ok(Hcall::Grant {
            segment: u64_at(regs::ARG0),
            grantee: name()?,
            rights: rights_arg()?,
        }),
        op::ACCEPT => {
            let gpa = u64_at(regs::ARG0);
            Ok(Hcall::Accept {
                cookie: cookie_at(regs::COOKIE),
                gpa: (gpa != 0).then_some(gpa),
            })
        }
        op::REGRANT => Ok(Hcall::Regrant {
            cookie: cookie_at(regs::COOKIE),
            grantee: name()?,
            rights: rights_arg()?,
        }),
        op::REVOKE => Ok(Hcall::Revoke {
            cookie: cookie_at(regs::COOKIE),
        }),
        op::SEGMENT_CREATE => {
            let gpa = u64_at(regs::ARG1);
            Ok(Hcall::SegmentCreate {
                id: name()?,
                size: u64_at(regs::ARG0),
                gpa: (gpa != 0).then_some(gpa),
            })
        }
        op::COPY => Ok(Hcall::Copy {
            src: cookie_at(regs::COOKIE),
            src_offset: u64_at(regs::ARG0),
            dst: cookie_at(regs::COOKIE2),
            dst_offset: u64_at(regs::ARG1),
            len: u64_at(regs::ARG2),
        }),
        _ => Err(status::BAD_OPCODE),
    }
}

/// The hcall page: a register file the guest fills, then a write of the
/// opcode runs the call (the vCPU waits for the manager's answer).
pub struct HcallDevice {
    maps: Arc<GrantMaps>,
    file: [u8; regs::END as usize],
}

impl HcallDevice {
    pub fn new(maps: Arc<GrantMaps>) -> Self {
        let mut file = [0u8; regs::END as usize];
        file[0..4].copy_from_slice(&regs::MAGIC_VALUE.to_le_bytes());
        file[4..8].copy_from_slice(&regs::ABI_VERSION.to_le_bytes());
        HcallDevice { maps, file }
    }

    fn put(&mut self, offset: u64, bytes: &[u8]) {
        let o = offset as usize;
        self.file[o..o + bytes.len()].copy_from_slice(bytes);
    }

    fn run(&mut self, opcode: u32) {
        let outcome = match decode_call(opcode, &self.file) {
            Ok(call) => self.maps.link.call(call),
            Err(status) => HcallOutcome {
                status,
                result0: 0,
                result1: 0,
                cookie: None,
            },
        };
        self.put(regs::STATUS, &outcome.status.to_le_bytes());
        self.put(regs::RESULT0, &outcome.result0.to_le_bytes());
        self.put(regs::RESULT1, &outcome.result1.to_le_bytes());
        if let Some(c) = outcome.cookie {
            self.put(regs::COOKIE, &c.0);
        }
    }
}

impl BusDevice for HcallDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if end <= regs::END {
            data.copy_from_slice(&self.file[offset as usize..end as usize]);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset.saturating_add(data.len() as u64);
        if offset == regs::OP && (data.len() == 4 || data.len() == 8) {
            let mut b = [0u8; 4];
            b.copy_from_slice(&data[..4]);
            self.run(u32::from_le_bytes(b));
            return;
        }
        // Writable: arguments, cookies, name.
        let writable = (offset >= regs::ARG0 && end <= regs::RESULT0)
            || (offset >= regs::COOKIE && end <= regs::END);
        if writable {
            self.put(offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn file_with(name: &[u8], arg1: u64) -> [u8; regs::END as usize] {
        let mut f = [0u8; regs::END as usize];
        f[regs::NAME as usize..regs::NAME as usize + name.len()].copy_from_slice(name);
        f[regs::ARG1 as usize..regs::ARG1 as usize + 8].copy_from_slice(&arg1.to_le_bytes());
        f
    }

    #[test]
    fn hcall_arguments_are_decoded_and_broken_ones_refused() {
        let f = file_with(b"bob\0", 2);
        assert_eq!(
            decode_call(op::GRANT, &f).unwrap(),
            Hcall::Grant {
                segment: 0,
                grantee: "bob".into(),
                rights: Rights::Rw
            }
        );
        assert_eq!(decode_call(99, &f), Err(status::BAD_OPCODE));
        let mut seg = file_with(b"ring\0", 0xe000_0000);
        seg[regs::ARG0 as usize..regs::ARG0 as usize + 8].copy_from_slice(&8192u64.to_le_bytes());
        assert_eq!(
            decode_call(op::SEGMENT_CREATE, &seg).unwrap(),
            Hcall::SegmentCreate {
                id: "ring".into(),
                size: 8192,
                gpa: Some(0xe000_0000)
            }
        );
        assert_eq!(
            decode_call(op::SEGMENT_CREATE, &file_with(b"\0", 0)),
            Err(status::BAD_ARGUMENT)
        );
        assert_eq!(decode_call(0, &f), Err(status::BAD_OPCODE));
        assert_eq!(
            decode_call(op::GRANT, &file_with(b"bob\0", 3)),
            Err(status::BAD_ARGUMENT)
        );
        assert_eq!(
            decode_call(op::GRANT, &file_with(b"b b\0", 1)),
            Err(status::BAD_ARGUMENT)
        );
        assert_eq!(
            decode_call(op::GRANT, &file_with(b"\0", 1)),
            Err(status::BAD_ARGUMENT)
        );
        assert_eq!(
            decode_call(op::REGRANT, &file_with(&[0xff, 0xfe, 0], 1)),
            Err(status::BAD_ARGUMENT)
        );
        // No NUL in the whole name field.
        assert_eq!(
            decode_call(op::GRANT, &file_with(&[b'a'; 64], 1)),
            Err(status::BAD_ARGUMENT)
        );
        let mut f = file_with(b"x\0", 1);
        f[regs::COOKIE as usize] = 7;
        match decode_call(op::ACCEPT, &f).unwrap() {
            Hcall::Accept { cookie, gpa } => {
                assert_eq!(cookie.0[0], 7);
                assert_eq!(gpa, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_hcall_page_reads_its_magic_and_ignores_stray_writes() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let irq = Arc::new(Interrupts::new(vm.clone()).unwrap());
        let maps = Arc::new(GrantMaps::new(vm, 16 << 20, 32, irq));
        let mut dev = HcallDevice::new(maps);
        let mut b = [0u8; 4];
        dev.read(regs::MAGIC, &mut b);
        assert_eq!(&b, b"PVHC");
        dev.write(regs::MAGIC, &[0, 0, 0, 0]);
        dev.read(regs::MAGIC, &mut b);
        assert_eq!(&b, b"PVHC");
        let mut far = [1u8; 8];
        dev.read(0xff8, &mut far);
        assert_eq!(far, [0; 8]);
        dev.write(0xff8, &far);
        // A call without a manager answers NO_MANAGER at once.
        dev.write(regs::NAME, b"bob\0");
        dev.write(regs::ARG1, &1u64.to_le_bytes());
        dev.write(regs::OP, &op::GRANT.to_le_bytes());
        dev.read(regs::STATUS, &mut b);
        assert_eq!(u32::from_le_bytes(b), status::NO_MANAGER);
    }

    fn memfd(size: u64) -> OwnedFd {
        // SAFETY: memfd_create with a valid name; checked.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: fresh descriptor.
        let f = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.set_len(size).unwrap();
        f.into()
    }

    #[test]
    fn mappings_stay_inside_the_windows_and_apart() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let irq = Arc::new(Interrupts::new(vm.clone()).unwrap());
        let maps = GrantMaps::new(vm, 64 << 20, kvm.get_nr_memslots(), irq);
        assert_eq!(maps.high_start(), 4 << 30);
        let a = maps
            .map(
                "a",
                memfd(1 << 20),
                Some(GRANT_WINDOW_START),
                1 << 20,
                false,
            )
            .unwrap();
        assert_eq!(a, GRANT_WINDOW_START);
        for (gpa, conflict) in [
            (0x10_0000, true),          // RAM
            (0xfec0_0000, true),        // IOAPIC
            (GRANT_WINDOW_START, true), // taken
            (GRANT_WINDOW_START + 0x8_0000, true),
            (0xefff_f000, true), // crosses the window's end
            (GRANT_WINDOW_START + 1, false),
        ] {
            let e = maps
                .map("x", memfd(1 << 20), Some(gpa), 1 << 20, false)
                .unwrap_err();
            assert_eq!(e.is_conflict(), conflict, "{gpa:#x}: {e}");
        }
        assert!(matches!(
            maps.map("a", memfd(4096), None, 4096, false),
            Err(MapError::Duplicate(_))
        ));
        assert!(matches!(
            maps.map("s", memfd(4096), None, 8192, false),
            Err(MapError::Short { .. })
        ));
        let b = maps.map("b", memfd(4096), None, 4096, true).unwrap();
        assert_eq!(b, GRANT_WINDOW_START + PLACE_ALIGN);
        let hi = maps
            .map("h", memfd(4096), Some(5 << 30), 4096, false)
            .unwrap();
        assert_eq!(hi, 5 << 30);
        assert_eq!(maps.mappings().len(), 3);
        maps.unmap("a").unwrap();
        maps.unmap("a").unwrap();
        let c = maps.map("c", memfd(4096), None, 4096, false).unwrap();
        assert_eq!(c, GRANT_WINDOW_START);
        // Faults: a revoked range and a read-only write are reported.
        let sent = Arc::new(Mutex::new(Vec::new()));
        let s2 = sent.clone();
        maps.link.set_sender(Box::new(move |m| {
            s2.lock().unwrap().push(m);
            true
        }));
        maps.unmap("c").unwrap();
        maps.fault(GRANT_WINDOW_START + 8, false);
        maps.fault(GRANT_WINDOW_START + 8, false);
        maps.fault(b, true);
        maps.fault(0xe800_0000, false);
        let mut word = [0u8; 4];
        assert!(maps.read_live(b, &mut word));
        assert_eq!(word, [0; 4]);
        assert!(!maps.read_live(b + 4094, &mut word));
        let sent = sent.lock().unwrap();
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(
            matches!(&sent[0], VmmMessage::Fault { key, count: 1, write: false, .. } if key == "c")
        );
        assert!(matches!(&sent[1], VmmMessage::Fault { key, write: true, .. } if key == "b"));
    }
}
