//! The tiny guest kernels, built from tests/guests/ by this crate's build
//! script (see docs/guests.md for what they print).

use std::path::PathBuf;

/// Path of a built guest image: `tiny.elf`, `tiny64.elf`, `tiny.bzImage`.
pub fn guest_path(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/guests/")).join(name)
}

/// FNV-1a 64-bit, the checksum the guests print for their initrd.
pub fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a64_known_values() {
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
