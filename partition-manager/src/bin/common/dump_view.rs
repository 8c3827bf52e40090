//! `parctl dumps` and `parctl dump-get` (docs/dump.md): the dump list as a
//! table, and copying one core out of the dump disk image the manager
//! hands over (read-only, beside its answer). The record comes from the
//! manager, which decoded and checked it; the copy still checks that the
//! image holds the whole core.

use anyhow::{anyhow, bail, Context};
use partition_manager::protocol::{DumpRecord, Response};
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// One dump in one line (also `parctl dump`'s answer).
pub fn dump_line(d: &DumpRecord) -> String {
    let pct = (d.written * 100).checked_div(d.size).unwrap_or(100);
    let mut s = format!(
        "dump {}: {} ({pct}% of a {} MiB core; {} MiB of {} MiB RAM zero, not written) after {}: {}",
        d.id,
        d.state.as_str(),
        mib(d.size),
        mib(d.zero_bytes),
        mib(d.ram_bytes),
        d.trigger.as_str(),
        d.reason
    );
    if let Some(e) = &d.error {
        s.push_str(&format!(" [{e}]"));
    }
    s
}

pub fn print_dumps(disk: &str, dumps: &[DumpRecord]) {
    println!("dump disk {disk}: {} dump(s)", dumps.len());
    println!("ID    STATE     PROGRESS  SIZE(MiB)  TRIGGER         STARTED(unix ms)  REASON");
    for d in dumps {
        let pct = (d.written * 100).checked_div(d.size).unwrap_or(100);
        println!(
            "{:<5} {:<9} {:>7}%  {:>9}  {:<15} {:<17} {}{}",
            d.id,
            d.state.as_str(),
            pct,
            mib(d.size),
            d.trigger.as_str(),
            d.started_ms,
            d.reason,
            d.error
                .as_ref()
                .map(|e| format!(" [{e}]"))
                .unwrap_or_default()
        );
    }
}

/// Copies the core of `d` out of `image` into `out`: zero blocks are
/// skipped (the output is sparse), the length is the core's.
pub fn extract(image: OwnedFd, d: &DumpRecord, out: &Path) -> anyhow::Result<()> {
    let image = File::from(image);
    let len = image.metadata().context("dump disk image")?.len();
    if d.offset.checked_add(d.size).is_none_or(|e| e > len) {
        bail!(
            "dump {}: {} bytes at {:#x} reach past the end of the {len}-byte dump disk",
            d.id,
            d.size,
            d.offset
        );
    }
    let mut file = File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < d.size {
        let n = ((d.size - done) as usize).min(buf.len());
        image
            .read_exact_at(&mut buf[..n], d.offset + done)
            .map_err(|e| anyhow!("reading the dump disk at {:#x}: {e}", d.offset + done))?;
        for (i, block) in buf[..n].chunks(4096).enumerate() {
            if block.iter().any(|&b| b != 0) {
                file.write_all_at(block, done + (i * 4096) as u64)
                    .with_context(|| format!("writing {}", out.display()))?;
            }
        }
        done += n as u64;
    }
    file.set_len(d.size)
        .with_context(|| format!("writing {}", out.display()))?;
    file.flush()?;
    Ok(())
}

/// Prints the manager's answer to `dump`, `dumps` (`json`: the stable
/// shape) or `dump-get` (`file`: where the core goes).
pub fn show(
    answer: (Response, Vec<OwnedFd>),
    json: bool,
    file: Option<&Path>,
) -> anyhow::Result<()> {
    match (answer, file) {
        ((Response::Dump { dump }, _), _) if json => {
            println!("{}", serde_json::json!({ "dump": dump }))
        }
        ((Response::Dump { dump }, _), _) => println!("{}", dump_line(&dump)),
        ((Response::Dumps { disk, dumps }, _), _) if json => {
            println!("{}", serde_json::json!({ "disk": disk, "dumps": dumps }))
        }
        ((Response::Dumps { disk, dumps }, _), _) => print_dumps(&disk, &dumps),
        ((Response::DumpFile { dump }, fds), Some(file)) => {
            let image = fds
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("the partition manager sent no dump disk"))?;
            extract(image, &dump, file)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "dump": dump, "file": file.display().to_string() })
                );
                return Ok(());
            }
            println!(
                "dump {} ({} bytes, ELF core) written to {}",
                dump.id,
                dump.size,
                file.display()
            );
        }
        ((other, _), _) => bail!("unexpected answer from the partition manager: {other:?}"),
    }
    Ok(())
}
