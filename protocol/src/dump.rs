//! Firmware-assisted dump (docs/dump.md): the table at the start of a dump
//! disk, and the dump records as they travel (VMM -> manager progress,
//! `parctl dumps`).
//!
//! A dump disk is a VIOS export. Its first [`TABLE_BYTES`] hold the table:
//!
//! ```text
//! 0   magic "PARVMDMP"          8 bytes
//! 8   version (1)               u32 little-endian
//! 12  JSON length               u32 LE, at most TABLE_BYTES - TABLE_PREFIX
//! 16  FNV-1a 64 of the JSON     u64 LE
//! 24  zero                      8 bytes
//! 32  JSON: {"next_id": N, "dumps": [DumpRecord, ...]}
//! ```
//!
//! Each dump is one ELF64 core file at a 1 MiB-aligned byte `offset` of
//! the disk, `size` bytes long. The VMM writes the record (state
//! `writing`) before the first byte of the core and rewrites it as the
//! dump goes on and when it ends. The table is outside input for whoever
//! reads it back (the manager listing and extracting dumps): [`decode`]
//! checks every field against the disk's size.

use serde::{Deserialize, Serialize};

/// Bytes at the start of the disk that belong to the table.
pub const TABLE_BYTES: u64 = 64 << 10;
/// The fixed part before the JSON.
pub const TABLE_PREFIX: usize = 32;
/// First bytes of a formatted dump disk.
pub const TABLE_MAGIC: &[u8; 8] = b"PARVMDMP";
/// The table's format version.
pub const TABLE_VERSION: u32 = 1;
/// Where cores are placed: multiples of this.
pub const DUMP_ALIGN: u64 = 1 << 20;
/// Most records a table keeps (the oldest go first).
pub const MAX_DUMPS: usize = 64;
/// Longest partition name or reason text kept in a record.
pub const MAX_TEXT: usize = 256;

/// What made the VMM dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpTrigger {
    /// Triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// A KVM internal error or failed entry.
    InternalError,
    /// The guest reported a panic through the pvpanic device.
    Pvpanic,
    /// The watchdog saw no sign of life.
    Watchdog,
    /// `parctl dump`: the partition kept running.
    OnDemand,
}

impl DumpTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpTrigger::TripleFault => "triple_fault",
            DumpTrigger::InternalError => "internal_error",
            DumpTrigger::Pvpanic => "pvpanic",
            DumpTrigger::Watchdog => "watchdog",
            DumpTrigger::OnDemand => "on_demand",
        }
    }
}

/// Where a dump stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpState {
    /// Being written (or the VMM died while writing it).
    Writing,
    /// Every byte of the core is on the disk.
    Complete,
    /// Writing stopped on an error (`error` says which).
    Failed,
}

impl DumpState {
    pub fn as_str(self) -> &'static str {
        match self {
            DumpState::Writing => "writing",
            DumpState::Complete => "complete",
            DumpState::Failed => "failed",
        }
    }
}

/// One dump on a dump disk (and, as it travels, one row of `parctl dumps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpRecord {
    /// Unique on its disk, from 1 up.
    pub id: u64,
    pub partition: String,
    pub trigger: DumpTrigger,
    /// The failure in words (the VMM's crash reason).
    pub reason: String,
    pub state: DumpState,
    /// Why a failed dump failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix time (milliseconds) the dump started.
    pub started_ms: u64,
    /// Unix time (milliseconds) it ended (complete or failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Byte offset of the ELF core on the disk.
    pub offset: u64,
    /// Bytes of the ELF core.
    pub size: u64,
    /// Bytes of it written so far (`size` when complete).
    pub written: u64,
    /// Guest RAM covered, and how much of it was zero (not written).
    pub ram_bytes: u64,
    pub zero_bytes: u64,
    /// The process writing it (a `writing` record whose process is gone
    /// was interrupted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_pid: Option<u32>,
}

/// The table of a dump disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpTable {
    /// The id the next dump gets.
    pub next_id: u64,
    /// Oldest first.
    pub dumps: Vec<DumpRecord>,
}

/// Why a table cannot be read or a dump cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DumpTableError {
    #[error("the disk holds no dump table (no PARVMDMP magic): never used as a dump disk")]
    NotFormatted,
    #[error("dump table version {0}, this build reads version {TABLE_VERSION}")]
    Version(u32),
    #[error("dump table: {0} bytes read, the table needs {TABLE_PREFIX} at least")]
    Short(usize),
    #[error("dump table: JSON length {0} does not fit the {TABLE_BYTES}-byte table")]
    Length(u32),
    #[error("dump table: checksum mismatch (the table is damaged)")]
    Checksum,
    #[error("dump table: {0}")]
    Json(String),
    #[error("dump table: record {id}: {what}")]
    Record { id: u64, what: String },
    #[error("dump table: the encoded table is {0} bytes, more than the {TABLE_BYTES}-byte area")]
    TooLarge(usize),
    #[error("the dump disk is busy: dump {id} is still being written where this one would go")]
    Busy { id: u64 },
    #[error("the dump disk holds {capacity} bytes; a dump of {size} bytes needs {needed}")]
    DiskTooSmall {
        capacity: u64,
        size: u64,
        needed: u64,
    },
}

/// FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Disk bytes a dump of `size` bytes needs at least (the table, then the
/// core at the first aligned offset).
pub fn disk_bytes_needed(size: u64) -> u64 {
    TABLE_BYTES
        .next_multiple_of(DUMP_ALIGN)
        .saturating_add(size)
}

/// The table as it goes on the disk: [`TABLE_PREFIX`] bytes then the JSON,
/// padded with zeros to a multiple of 4 KiB.
pub fn encode(table: &DumpTable) -> Result<Vec<u8>, DumpTableError> {
    let json = serde_json::to_vec(table).map_err(|e| DumpTableError::Json(e.to_string()))?;
    let total = TABLE_PREFIX + json.len();
    if total as u64 > TABLE_BYTES {
        return Err(DumpTableError::TooLarge(total));
    }
    let mut out = Vec::with_capacity(total.next_multiple_of(4096));
    out.extend_from_slice(TABLE_MAGIC);
    out.extend_from_slice(&TABLE_VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&fnv1a64(&json).to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&json);
    out.resize(total.next_multiple_of(4096), 0);
    Ok(out)
}

/// Reads a table from the first bytes of a disk of `capacity` bytes
/// (`bytes` may be shorter than [`TABLE_BYTES`] if the JSON fits). Every
/// record is checked: inside the disk past the table, aligned, `written`
/// at most `size`, ids unique and below `next_id`, texts bounded.
pub fn decode(bytes: &[u8], capacity: u64) -> Result<DumpTable, DumpTableError> {
    if bytes.len() < TABLE_PREFIX {
        return Err(DumpTableError::Short(bytes.len()));
    }
    if &bytes[..8] != TABLE_MAGIC {
        return Err(DumpTableError::NotFormatted);
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != TABLE_VERSION {
        return Err(DumpTableError::Version(version));
    }
    let len = word(12);
    let end = TABLE_PREFIX as u64 + u64::from(len);
    if end > TABLE_BYTES {
        return Err(DumpTableError::Length(len));
    }
    if end > bytes.len() as u64 {
        return Err(DumpTableError::Short(bytes.len()));
    }
    let json = &bytes[TABLE_PREFIX..end as usize];
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[16..24]);
    if u64::from_le_bytes(sum) != fnv1a64(json) {
        return Err(DumpTableError::Checksum);
    }
    let table: DumpTable =
        serde_json::from_slice(json).map_err(|e| DumpTableError::Json(e.to_string()))?;
    check(&table, capacity)?;
    Ok(table)
}

fn check(table: &DumpTable, capacity: u64) -> Result<(), DumpTableError> {
    if table.dumps.len() > MAX_DUMPS {
        return Err(DumpTableError::Json(format!(
            "{} records, at most {MAX_DUMPS}",
            table.dumps.len()
        )));
    }
    for (i, d) in table.dumps.iter().enumerate() {
        let bad = |what: String| DumpTableError::Record { id: d.id, what };
        if d.id == 0 || d.id >= table.next_id {
            return Err(bad(format!("id outside 1..{}", table.next_id)));
        }
        if table.dumps[..i].iter().any(|o| o.id == d.id) {
            return Err(bad("id appears twice".into()));
        }
        if d.offset < TABLE_BYTES || !d.offset.is_multiple_of(DUMP_ALIGN) {
            return Err(bad(format!(
                "offset {:#x} is inside the table or not {DUMP_ALIGN}-byte aligned",
                d.offset
            )));
        }
        if d.offset.checked_add(d.size).is_none_or(|e| e > capacity) {
            return Err(bad(format!(
                "{} bytes at {:#x} reach past the end of the {capacity}-byte disk",
                d.size, d.offset
            )));
        }
        if d.written > d.size {
            return Err(bad(format!("{} bytes written of {}", d.written, d.size)));
        }
        if d.state == DumpState::Complete && d.written != d.size {
            return Err(bad("complete but not wholly written".into()));
        }
        if d.zero_bytes > d.ram_bytes {
            return Err(bad("more zero bytes than RAM".into()));
        }
        let texts = [&d.partition, &d.reason]
            .into_iter()
            .chain(d.error.as_ref());
        if texts.into_iter().any(|t| t.len() > MAX_TEXT) {
            return Err(bad(format!("a text field is longer than {MAX_TEXT} bytes")));
        }
    }
    Ok(())
}

/// Cuts `text` to at most [`MAX_TEXT`] bytes on a character boundary.
pub fn bounded(text: &str) -> String {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl DumpTable {
    /// The record of dump `id`.
    pub fn get(&self, id: u64) -> Option<&DumpRecord> {
        self.dumps.iter().find(|d| d.id == id)
    }

    /// The record of dump `id`, to update.
    pub fn get_mut(&mut self, id: u64) -> Option<&mut DumpRecord> {
        self.dumps.iter_mut().find(|d| d.id == id)
    }

    /// `mine` into the table as it is on the disk now (`self`, another
    /// writer may have changed it since this one read it): its record
    /// replaced or added, records its range overlaps dropped, `next_id`
    /// the larger of both.
    pub fn merge(&mut self, mine: &DumpRecord, next_id: u64) {
        let (start, end) = (mine.offset, mine.offset + mine.size.max(1));
        self.dumps
            .retain(|d| d.id == mine.id || d.offset + d.size.max(1) <= start || d.offset >= end);
        match self.get_mut(mine.id) {
            Some(d) => *d = mine.clone(),
            None => self.dumps.push(mine.clone()),
        }
        self.dumps.sort_by_key(|d| d.id);
        while self.dumps.len() > MAX_DUMPS {
            self.dumps.remove(0);
        }
        self.next_id = self.next_id.max(next_id).max(mine.id + 1);
    }

    /// Where a new dump of `size` bytes goes on a disk of `capacity`
    /// bytes: after the newest dump, or back at the start when it does not
    /// fit there. Records of dumps it overwrites are dropped, as is the
    /// oldest when the table is full. Returns the new dump's id and offset;
    /// the caller adds its record.
    pub fn place(&mut self, size: u64, capacity: u64) -> Result<(u64, u64), DumpTableError> {
        let first = TABLE_BYTES.next_multiple_of(DUMP_ALIGN);
        if first.saturating_add(size) > capacity {
            return Err(DumpTableError::DiskTooSmall {
                capacity,
                size,
                needed: disk_bytes_needed(size),
            });
        }
        let after_newest = self
            .dumps
            .iter()
            .max_by_key(|d| d.id)
            .map(|d| (d.offset + d.size).next_multiple_of(DUMP_ALIGN))
            .unwrap_or(first);
        let offset = if after_newest.saturating_add(size) <= capacity {
            after_newest
        } else {
            first
        };
        let end = offset + size;
        let overlaps = |d: &DumpRecord| !(d.offset + d.size.max(1) <= offset || d.offset >= end);
        // A dump still being written (by a VMM that went on after its
        // partition rebooted) is never overwritten.
        if let Some(d) = self
            .dumps
            .iter()
            .find(|d| d.state == DumpState::Writing && overlaps(d))
        {
            return Err(DumpTableError::Busy { id: d.id });
        }
        self.dumps.retain(|d| !overlaps(d));
        while self.dumps.len() >= MAX_DUMPS {
            self.dumps.remove(0);
        }
        let id = self.next_id.max(1);
        self.next_id = id + 1;
        Ok((id, offset))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const CAP: u64 = 64 << 20;

    fn record(id: u64, offset: u64, size: u64) -> DumpRecord {
        DumpRecord {
            id,
            partition: "p".into(),
            trigger: DumpTrigger::TripleFault,
            reason: "guest triple fault on vCPU 0".into(),
            state: DumpState::Complete,
            error: None,
            started_ms: 1,
            finished_ms: Some(2),
            offset,
            size,
            written: size,
            ram_bytes: 32 << 20,
            zero_bytes: 30 << 20,
            writer_pid: None,
        }
    }

    fn table() -> DumpTable {
        DumpTable {
            next_id: 3,
            dumps: vec![record(1, 1 << 20, 5000), record(2, 2 << 20, 4096)],
        }
    }

    #[test]
    fn a_table_round_trips() {
        let bytes = encode(&table()).unwrap();
        assert_eq!(bytes.len() % 4096, 0);
        assert_eq!(&bytes[..8], b"PARVMDMP");
        assert_eq!(decode(&bytes, CAP).unwrap(), table());
        // A whole 64 KiB area read back (zeros after the JSON) decodes too.
        let mut area = bytes.clone();
        area.resize(TABLE_BYTES as usize, 0);
        assert_eq!(decode(&area, CAP).unwrap(), table());
    }

    #[test]
    fn broken_tables_are_refused_with_the_reason() {
        let good = encode(&table()).unwrap();
        assert_eq!(decode(&[0; 4096], CAP), Err(DumpTableError::NotFormatted));
        assert_eq!(decode(&good[..10], CAP), Err(DumpTableError::Short(10)));
        let mut v = good.clone();
        v[8] = 9;
        assert_eq!(decode(&v, CAP), Err(DumpTableError::Version(9)));
        let mut v = good.clone();
        v[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&v, CAP), Err(DumpTableError::Length(u32::MAX)));
        // A length inside the area but past what was read.
        let mut v = good.clone();
        v[12..16].copy_from_slice(&60000u32.to_le_bytes());
        assert!(matches!(decode(&v, CAP), Err(DumpTableError::Short(_))));
        let mut v = good.clone();
        v[40] ^= 1;
        assert_eq!(decode(&v, CAP), Err(DumpTableError::Checksum));
        // Every byte flipped, one at a time: never a panic, never Ok with
        // other content.
        for i in 0..good.len().min(600) {
            let mut v = good.clone();
            v[i] ^= 0x5a;
            if let Ok(t) = decode(&v, CAP) {
                assert_eq!(t, table(), "byte {i}");
            }
        }
        // Valid JSON, wrong shape.
        let bad_json = |json: &str| {
            let mut v = Vec::new();
            v.extend_from_slice(TABLE_MAGIC);
            v.extend_from_slice(&TABLE_VERSION.to_le_bytes());
            v.extend_from_slice(&(json.len() as u32).to_le_bytes());
            v.extend_from_slice(&fnv1a64(json.as_bytes()).to_le_bytes());
            v.extend_from_slice(&[0; 8]);
            v.extend_from_slice(json.as_bytes());
            decode(&v, CAP)
        };
        assert!(matches!(bad_json("[1,2]"), Err(DumpTableError::Json(_))));
        assert!(matches!(
            bad_json(r#"{"next_id":1,"dumps":[],"x":1}"#),
            Err(DumpTableError::Json(_))
        ));
        assert!(matches!(
            bad_json("{\"next_id\":"),
            Err(DumpTableError::Json(_))
        ));
    }

    #[test]
    fn records_outside_the_disk_or_inconsistent_are_refused() {
        let with = |f: &dyn Fn(&mut DumpRecord)| {
            let mut t = table();
            f(&mut t.dumps[1]);
            decode(&encode(&t).unwrap(), CAP)
        };
        let refused = |r: Result<DumpTable, DumpTableError>, what: &str| match r {
            Err(DumpTableError::Record { what: w, .. }) => assert!(w.contains(what), "{w}"),
            other => panic!("{what}: {other:?}"),
        };
        refused(with(&|d| d.offset = 0), "inside the table");
        refused(with(&|d| d.offset = (2 << 20) + 512), "aligned");
        refused(with(&|d| d.size = CAP), "past the end");
        refused(with(&|d| d.size = u64::MAX), "past the end");
        refused(
            with(&|d| d.offset = u64::MAX - (DUMP_ALIGN - 1)),
            "past the end",
        );
        refused(with(&|d| d.written = d.size + 1), "written");
        refused(
            with(&|d| {
                d.written = 1;
            }),
            "complete",
        );
        refused(with(&|d| d.zero_bytes = d.ram_bytes + 1), "zero");
        refused(with(&|d| d.id = 1), "twice");
        refused(with(&|d| d.id = 3), "id outside");
        refused(with(&|d| d.id = 0), "id outside");
        refused(with(&|d| d.reason = "x".repeat(MAX_TEXT + 1)), "longer");
        let mut t = table();
        t.next_id = 100;
        t.dumps = (1..=MAX_DUMPS as u64 + 1)
            .map(|i| record(i, i << 20, 1))
            .collect();
        let big = encode(&t).unwrap();
        assert!(matches!(
            decode(&big, 1 << 30),
            Err(DumpTableError::Json(_))
        ));
    }

    #[test]
    fn dumps_are_placed_after_the_newest_and_wrap_over_the_oldest() {
        let mut t = DumpTable::default();
        let (id, off) = t.place(3 << 20, 10 << 20).unwrap();
        assert_eq!((id, off), (1, 1 << 20));
        t.dumps.push(record(id, off, 3 << 20));
        let (id, off) = t.place((3 << 20) + 1, 10 << 20).unwrap();
        assert_eq!((id, off), (2, 4 << 20));
        t.dumps.push(record(id, off, (3 << 20) + 1));
        // 8 MiB are used (rounded); 3 MiB more do not fit: back to the
        // start, over dump 1 (and not over dump 2).
        let (id, off) = t.place(3 << 20, 10 << 20).unwrap();
        assert_eq!((id, off), (3, 1 << 20));
        assert_eq!(t.dumps.iter().map(|d| d.id).collect::<Vec<_>>(), vec![2]);
        t.dumps.push(record(id, off, 3 << 20));
        assert!(decode(&encode(&t).unwrap(), 10 << 20).is_ok());
        // A dump still being written is never overwritten.
        let mut busy = t.clone();
        busy.get_mut(3).unwrap().state = DumpState::Writing;
        busy.dumps.push(record(4, 4 << 20, 5 << 20));
        busy.next_id = 5;
        assert_eq!(
            busy.place(3 << 20, 10 << 20),
            Err(DumpTableError::Busy { id: 3 })
        );
        // Too big for the disk at all.
        assert_eq!(
            t.place(10 << 20, 10 << 20),
            Err(DumpTableError::DiskTooSmall {
                capacity: 10 << 20,
                size: 10 << 20,
                needed: 11 << 20
            })
        );
    }

    #[test]
    fn a_record_merges_into_a_table_another_writer_changed() {
        let mut on_disk = table(); // dumps 1 and 2, next 3
        let mut other = record(3, 8 << 20, 4096);
        other.state = DumpState::Writing;
        on_disk.dumps.push(other.clone());
        on_disk.next_id = 4;
        // This writer placed dump 3 too (it read the table before): its
        // record wins for id 3, the ids go on from the larger next_id.
        let mut mine = record(3, 8 << 20, 8192);
        mine.partition = "q".into();
        on_disk.merge(&mine, 4);
        assert_eq!(on_disk.get(3).unwrap().partition, "q");
        assert_eq!(on_disk.next_id, 4);
        // A record overlapping mine goes; the others stay.
        let mut t = table();
        let over = record(9, 1 << 20, 4096);
        t.next_id = 10;
        t.merge(&over, 10);
        assert_eq!(t.dumps.iter().map(|d| d.id).collect::<Vec<_>>(), [2, 9]);
        assert!(decode(&encode(&t).unwrap(), CAP).is_ok());
    }

    #[test]
    fn texts_are_bounded_on_character_boundaries() {
        assert_eq!(bounded("abc"), "abc");
        let long = "é".repeat(200);
        let b = bounded(&long);
        assert!(b.len() <= MAX_TEXT && long.starts_with(&b));
    }
}
