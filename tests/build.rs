//! Builds the tiny guest kernels from source (tests/guests/*.S, GNU as/ld)
//! into `<workspace>/target/guests/`, where tests, configs/ and benchmarks
//! find them.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let guests = manifest.join("guests");
    let out = manifest.join("../target/guests");
    println!("cargo:rerun-if-changed={}", guests.display());
    if let Ok(entries) = std::fs::read_dir(&guests) {
        for e in entries.flatten() {
            println!("cargo:rerun-if-changed={}", e.path().display());
        }
    }
    let status = Command::new("bash")
        .arg(guests.join("build.sh"))
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "tests/guests/build.sh failed ({s}): the tiny guests need GNU as and ld (binutils)"
        ),
        Err(e) => panic!("cannot run tests/guests/build.sh: {e}"),
    }
}
