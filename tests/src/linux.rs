//! The Debian Linux test images (docs/linux.md): built from Debian packages
//! by the scripts in tests/linux/ and cached in target/linux/, so that only
//! the first build of a checkout downloads anything.

use crate::repo_root;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The image `vmm` boots (bzImage, initramfs.cpio.gz, pattern.bin,
/// kernel-release), built by tests/linux/build-image.sh into
/// target/linux/image once per test binary.
pub fn image() -> PathBuf {
    built("build-image.sh", "image")
}

/// The image of the VIOS interop test: [`image`]'s files plus
/// initramfs-pci.cpio.gz (the virtio PCI modules for QEMU's
/// vhost-user-blk-pci), built by tests/linux/build-vios-initramfs.sh into
/// target/linux/vios-image once per test binary.
pub fn vios_image() -> PathBuf {
    built("build-vios-initramfs.sh", "vios-image")
}

/// Runs tests/linux/`script` with target/linux/`dir` as its output
/// directory, the first time `dir` is asked for; panics if it fails. The
/// lock is held while the script runs, so tests asking at once build once.
fn built(script: &str, dir: &'static str) -> PathBuf {
    static BUILT: Mutex<Vec<(&'static str, PathBuf)>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, out)) = built.iter().find(|(d, _)| *d == dir) {
        return out.clone();
    }
    let out = repo_root().join("target/linux").join(dir);
    let script = repo_root().join("tests/linux").join(script);
    let run = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"));
    assert!(
        run.status.success(),
        "{script:?} failed (run scripts/install-deps.sh; it needs apt access to Debian):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    built.push((dir, out.clone()));
    out
}
