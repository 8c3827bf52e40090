//! Firmware-assisted dump tests (docs/dump.md): the tiny guest's dump
//! constants (tests/guests/dump.S), the table and cores of a dump disk
//! image, and what `readelf` and batch `gdb` make of a core.

use parvm_protocol::dump::{self, DumpRecord, DumpTable, TABLE_BYTES};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;

/// Where `parvm.test=dumpfault`/`dumppanic` write their four qwords.
pub const DUMP_PATTERN: u64 = 0x40_0000;
pub const DUMP_QWORDS: [u64; 4] = [
    0x0123_4567_89ab_cdef,
    0xfedc_ba98_7654_3210,
    0x5041_5256_4455_4d50,
    0xdead_beef_cafe_f00d,
];
/// r14 and r15 when they fail.
pub const DUMP_R14: u64 = 0x1122_3344_5566_7788;
pub const DUMP_R15: u64 = 0x7061_7276_6475_6d70;
/// `parvm.test=dumpcount` stores its count (r15) here, A first.
pub const DUMP_COUNT_A: u64 = 0x40_0000;
pub const DUMP_COUNT_B: u64 = 0x100_0000;

/// The table of a dump disk image.
pub fn table(image: &Path) -> Result<DumpTable, String> {
    let mut f = std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut head = vec![0u8; TABLE_BYTES.min(len) as usize];
    f.read_exact(&mut head).map_err(|e| e.to_string())?;
    dump::decode(&head, len).map_err(|e| e.to_string())
}

/// Copies dump `rec`'s core out of the image into `out`.
pub fn extract(image: &Path, rec: &DumpRecord, out: &Path) {
    let mut f = std::fs::File::open(image).unwrap_or_else(|e| panic!("{}: {e}", image.display()));
    f.seek(SeekFrom::Start(rec.offset))
        .unwrap_or_else(|e| panic!("seek: {e}"));
    let mut core = vec![0u8; rec.size as usize];
    f.read_exact(&mut core)
        .unwrap_or_else(|e| panic!("read core: {e}"));
    std::fs::write(out, core).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

fn tool(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?} (scripts/install-deps.sh installs it): {e}")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// `readelf -W -h -l -n CORE`, which must succeed without warnings.
pub fn readelf(core: &Path) -> String {
    let text = tool(
        Command::new("readelf")
            .args(["-W", "-h", "-l", "-n"])
            .arg(core),
    );
    assert!(
        !text.contains("Warning") && !text.contains("Error"),
        "readelf complains:\n{text}"
    );
    text
}

/// Batch gdb on the core (`gdb -batch -c CORE -ex ...`: a core without an
/// executable is given with `-c`).
pub fn gdb(core: &Path, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-c"]).arg(core);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    tool(&mut cmd)
}

/// A register's value in gdb's `info registers` output.
pub fn gdb_register(out: &str, name: &str) -> Option<u64> {
    out.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next() != Some(name) {
            return None;
        }
        u64::from_str_radix(w.next()?.strip_prefix("0x")?, 16).ok()
    })
}

/// The qwords gdb printed for `x/Ngx ADDR`, from the lines starting at
/// `addr`.
pub fn gdb_qwords(out: &str, addr: u64) -> Vec<u64> {
    let mut q = Vec::new();
    for l in out.lines() {
        let Some((a, rest)) = l.split_once(':') else {
            continue;
        };
        let Some(a) = a
            .trim()
            .strip_prefix("0x")
            .and_then(|a| u64::from_str_radix(a, 16).ok())
        else {
            continue;
        };
        if a < addr || a >= addr + 0x1000 {
            continue;
        }
        q.extend(
            rest.split_whitespace()
                .filter_map(|w| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok()),
        );
    }
    q
}

/// Guest-physical bytes `[addr, addr + len)` of an ELF core, from its
/// PT_LOADs (`p_paddr`; zero where `p_filesz` ends before `p_memsz`);
/// `None` if a byte is in no PT_LOAD or the core is malformed.
pub fn phys_read(core: &[u8], addr: u64, len: usize) -> Option<Vec<u8>> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(core.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(core.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(core.get(at..at + 8)?.try_into().ok()?));
    let phoff = u64_at(32)? as usize;
    let phnum = usize::from(u16_at(56)?);
    let mut out = vec![0u8; len];
    let mut covered = vec![false; len];
    for i in 0..phnum {
        let ph = phoff + 56 * i;
        if u32_at(ph)? != 1 {
            continue;
        }
        let (off, paddr, filesz, memsz) = (
            u64_at(ph + 8)?,
            u64_at(ph + 24)?,
            u64_at(ph + 32)?,
            u64_at(ph + 40)?,
        );
        let lo = addr.max(paddr);
        let hi = (addr + len as u64).min(paddr + memsz);
        for a in lo..hi {
            let i = (a - addr) as usize;
            covered[i] = true;
            let within = a - paddr;
            if within < filesz {
                out[i] = *core.get((off + within) as usize)?;
            }
        }
    }
    covered.iter().all(|&c| c).then_some(out)
}
