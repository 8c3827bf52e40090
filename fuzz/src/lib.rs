//! Fuzz target bodies for parvm: each `pub fn TARGET(data: &[u8])` feeds
//! arbitrary bytes to one parser or state machine of the product and panics
//! when an invariant breaks (a panic inside the product code is a finding
//! too). cargo-fuzz runs them with libFuzzer from `fuzz/cargo-fuzz/` (each
//! of its `fuzz_targets/*.rs` is a one-line call into this crate); the test
//! in `tests/seeds.rs` runs every seed (`fuzz/corpus/TARGET/`) and every
//! regression (`fuzz/regressions/TARGET/`) through the same functions in the
//! default test suite. See docs/fuzzing.md.
//!
//! Module map (one target per module, named as the target):
//!
//! - [`frame`]: the protocol frame decoder and the four message enums.
//! - [`definition`]: partition definitions (vmm's parser and validation,
//!   the manager's check and `segments`, the VIOS's definition).
//! - [`block`]: virtio-blk descriptor chains in fuzz-written guest memory,
//!   popped from a split queue and run through `BlockCore::process` over an
//!   in-memory disk.
//! - [`hcall`]: the hcall register-file decoder.
//! - [`vhost_user`]: a vhost-user client speaking fuzz-chosen messages (with
//!   memfds and eventfds beside them) to the VIOS's `serve_stream`.
//! - [`grant_table`]: the manager's grant table driven by a sequence of
//!   operations, its invariants checked after each.
//! - [`http`]: the manager's HTTP/1.1 request reader, on a socket.
//! - [`dump_table`]: the table of a dump disk as read back from its image.

pub mod block;
pub mod definition;
pub mod dump_table;
pub mod frame;
pub mod grant_table;
pub mod hcall;
pub mod http;
pub mod vhost_user;

/// A target body: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target by name: what `scripts/fuzz` and the seed test iterate.
pub const TARGETS: &[(&str, Target)] = &[
    ("frame", frame::frame),
    ("definition", definition::definition),
    ("block", block::block),
    ("hcall", hcall::hcall),
    ("vhost_user", vhost_user::vhost_user),
    ("grant_table", grant_table::grant_table),
    ("http", http::http),
    ("dump_table", dump_table::dump_table),
];

/// A cursor over fuzz input: every read succeeds, returning zeroes once the
/// input is used up, so a target never has to give up half-way.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }
}
