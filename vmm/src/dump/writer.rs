//! Writing one dump to a dump disk: the table updated before, during and
//! after; the core's head (ELF header, program headers, notes); the RAM
//! that is not zero, read from the memfd in chunks of the driver's largest
//! transfer and, after a crash, released from the memfd once written.

use super::cpu::CpuState;
use super::elf::{self, Layout};
use super::ram::{self, RamSource};
use super::DumpError;
use parvm_protocol::dump::{
    self, DumpRecord, DumpState, DumpTable, DumpTableError, DumpTrigger, TABLE_BYTES,
};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use virtio_devices::paging::{PagingDisk, MAX_TRANSFER};

/// The table is rewritten after every this many bytes of the core.
const TABLE_EVERY: u64 = 64 << 20;
/// Written guest RAM is released in runs of at most this many bytes.
const PUNCH_EVERY: u64 = 8 << 20;
/// Progress goes to the manager at most this often.
const REPORT_EVERY: Duration = Duration::from_millis(200);

/// Where a dump goes: a block device with byte offsets in multiples of
/// 512 and at most [`MAX_TRANSFER`] bytes per call (the paging driver).
pub trait DumpSink {
    fn capacity(&self) -> u64;
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String>;
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String>;
    fn flush(&mut self) -> Result<(), String>;
}

impl DumpSink for PagingDisk {
    fn capacity(&self) -> u64 {
        PagingDisk::capacity(self)
    }
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        PagingDisk::read_at(self, offset, len)
            .map(|b| b.to_vec())
            .map_err(|e| e.to_string())
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        PagingDisk::write_at(self, offset, data).map_err(|e| e.to_string())
    }
    fn flush(&mut self) -> Result<(), String> {
        PagingDisk::flush(self).map_err(|e| e.to_string())
    }
}

/// What the record says about the dump.
pub struct DumpMeta {
    pub partition: String,
    pub trigger: DumpTrigger,
    pub reason: String,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether the process that writes a `writing` record is gone (or is
/// this one, whose earlier dump then failed).
fn writer_gone(d: &DumpRecord) -> bool {
    match d.writer_pid {
        Some(pid) if pid != std::process::id() => {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        }
        _ => true,
    }
}

/// The disk's table as it is now, with the `writing` records of VMMs that
/// are gone marked failed.
fn decode_disk(sink: &mut dyn DumpSink) -> Result<Result<DumpTable, DumpTableError>, DumpError> {
    let bytes = sink
        .read_at(0, TABLE_BYTES as usize)
        .map_err(DumpError::Disk)?;
    let mut table = dump::decode(&bytes, sink.capacity());
    if let Ok(t) = table.as_mut() {
        for d in t
            .dumps
            .iter_mut()
            .filter(|d| d.state == DumpState::Writing && writer_gone(d))
        {
            d.state = DumpState::Failed;
            d.error = Some("interrupted: the VMM ended before the dump did".into());
        }
    }
    Ok(table)
}

/// The disk's table; a disk without one (or with a damaged one) starts a
/// new table. Dumps left `writing` by a VMM that is gone are marked failed
/// (a VMM whose partition rebooted may still be writing one).
pub fn read_table(sink: &mut dyn DumpSink) -> Result<DumpTable, DumpError> {
    let table = match decode_disk(sink)? {
        Ok(t) => t,
        Err(DumpTableError::NotFormatted) => {
            tracing::info!("dump disk: no table yet, formatting");
            DumpTable::default()
        }
        Err(e) => {
            tracing::warn!(error = %e, "dump disk: the table is unreadable; starting a new one (earlier dumps are forgotten)");
            DumpTable::default()
        }
    };
    Ok(table)
}

/// Writes `record` into the disk's table: the table is read again first
/// and the record merged into it, so that what another VMM wrote since
/// (a dump of the rebooted partition while this one goes on) stays.
fn save(
    sink: &mut dyn DumpSink,
    table: &mut DumpTable,
    record: &DumpRecord,
) -> Result<(), DumpError> {
    match decode_disk(sink)? {
        Ok(mut disk) => {
            disk.merge(record, table.next_id);
            *table = disk;
        }
        Err(_) => {
            let next = table.next_id;
            table.merge(record, next);
        }
    }
    let bytes = dump::encode(table).map_err(DumpError::Table)?;
    sink.write_at(0, &bytes).map_err(DumpError::Disk)
}

fn punch(memfd: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on our memfd; no memory is passed.
    let r = unsafe {
        libc::fallocate(
            memfd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if r != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "dump: cannot release written memory");
    }
}

/// Plans and writes one dump; `progress` sees the record at the start,
/// at most every [`REPORT_EVERY`] while it runs, and at the end (complete
/// or failed). A failure after the dump was placed returns
/// [`DumpError::Failed`] with the failed record.
pub fn write_dump(
    sink: &mut dyn DumpSink,
    meta: &DumpMeta,
    cpus: &[CpuState],
    ram: &RamSource<'_>,
    progress: &mut dyn FnMut(&DumpRecord),
) -> Result<DumpRecord, DumpError> {
    let started = now_ms();
    let mut buf = vec![0u8; MAX_TRANSFER];
    let runs = ram::scan(ram, &mut buf).map_err(DumpError::Memory)?;
    let loads = ram::loads(ram.pieces, &runs);
    let layout = elf::layout(cpus, &loads);
    let mut table = read_table(sink)?;
    let (id, offset) = table
        .place(layout.size, sink.capacity())
        .map_err(DumpError::Table)?;
    let ram_bytes: u64 = ram.pieces.iter().map(|p| p.len).sum();
    let written_ram: u64 = loads.iter().filter(|l| l.file).map(|l| l.memsz).sum();
    let mut record = DumpRecord {
        id,
        partition: dump::bounded(&meta.partition),
        trigger: meta.trigger,
        reason: dump::bounded(&meta.reason),
        state: DumpState::Writing,
        error: None,
        started_ms: started,
        finished_ms: None,
        offset,
        size: layout.size,
        written: 0,
        ram_bytes,
        zero_bytes: ram_bytes - written_ram,
        writer_pid: Some(std::process::id()),
    };
    table.dumps.push(record.clone());
    tracing::info!(
        id,
        offset,
        size = layout.size,
        ram_bytes,
        zero = record.zero_bytes,
        "dump: starts"
    );
    let result = save(sink, &mut table, &record).and_then(|()| {
        progress(&record);
        write_core(
            sink,
            &layout,
            ram,
            &mut buf,
            &mut table,
            &mut record,
            progress,
        )
    });
    record.finished_ms = Some(now_ms());
    match result {
        Ok(()) => {
            record.state = DumpState::Complete;
            record.written = record.size;
            save(sink, &mut table, &record)
                .and_then(|()| sink.flush().map_err(DumpError::Disk))
                .inspect_err(|e| {
                    record.state = DumpState::Failed;
                    record.error = Some(e.to_string());
                    progress(&record);
                })?;
            progress(&record);
            Ok(record)
        }
        Err(e) => {
            record.state = DumpState::Failed;
            record.error = Some(dump::bounded(&e.to_string()));
            // Best effort: the disk may be what failed.
            let _ = save(sink, &mut table, &record);
            progress(&record);
            Err(DumpError::Failed(Box::new(record), e.to_string()))
        }
    }
}

fn write_core(
    sink: &mut dyn DumpSink,
    layout: &Layout,
    ram: &RamSource<'_>,
    buf: &mut [u8],
    table: &mut DumpTable,
    record: &mut DumpRecord,
    progress: &mut dyn FnMut(&DumpRecord),
) -> Result<(), DumpError> {
    let base = record.offset;
    for (i, chunk) in layout.head.chunks(MAX_TRANSFER).enumerate() {
        let at = base + (i * MAX_TRANSFER) as u64;
        sink.write_at(at, chunk).map_err(DumpError::Disk)?;
    }
    record.written = layout.head.len() as u64;
    let mut reported = Instant::now();
    let mut tabled = 0u64;
    let mut released: Option<(u64, u64)> = None;
    for (load, file_at) in layout.loads.iter().filter(|(l, _)| l.file) {
        let Some(piece) = ram
            .pieces
            .iter()
            .find(|p| p.gpa <= load.paddr && load.paddr < p.gpa + p.len)
        else {
            continue;
        };
        let mut done = 0u64;
        let mut hole = ram.next_hole(piece, load.paddr);
        while done < load.memsz {
            let n = ((load.memsz - done) as usize).min(buf.len());
            let gpa = load.paddr + done;
            let at = base + file_at + done;
            let mem_end = piece.memfd_at(gpa) + n as u64;
            // Straight from guest RAM where that allocates nothing (no hole
            // of the memfd in the chunk), else through the buffer.
            let direct = if mem_end <= hole {
                ram.with_direct(gpa, n, &mut |bytes| sink.write_at(at, bytes))
            } else {
                None
            };
            if hole < mem_end {
                hole = ram.next_hole(piece, gpa + n as u64);
            }
            match direct {
                Some(written) => written.map_err(DumpError::Disk)?,
                None => {
                    ram.read(piece, gpa, &mut buf[..n])
                        .map_err(DumpError::Memory)?;
                    sink.write_at(at, &buf[..n]).map_err(DumpError::Disk)?;
                }
            }
            let mem_at = piece.memfd_at(gpa);
            if ram.release && ram.mapped.is_none() {
                // Released in runs of up to PUNCH_EVERY (one fallocate each).
                match released.as_mut() {
                    Some((start, len)) if *start + *len == mem_at => *len += n as u64,
                    _ => {
                        if let Some((start, len)) = released.take() {
                            punch(ram.memfd, start, len);
                        }
                        released = Some((mem_at, n as u64));
                    }
                }
                if released.is_some_and(|(_, len)| len >= PUNCH_EVERY) {
                    if let Some((start, len)) = released.take() {
                        punch(ram.memfd, start, len);
                    }
                }
            }
            done += n as u64;
            record.written += n as u64;
            if record.written - tabled >= TABLE_EVERY {
                tabled = record.written;
                save(sink, table, record)?;
            }
            if reported.elapsed() >= REPORT_EVERY {
                reported = Instant::now();
                progress(record);
            }
        }
    }
    if let Some((start, len)) = released {
        punch(ram.memfd, start, len);
    }
    Ok(())
}
