//! Parsing of a virtio-blk request out of a descriptor chain.
//!
//! The layout is not assumed to follow descriptor boundaries (virtio 1.x
//! has no framing requirement): the chain is seen as a device-readable byte
//! stream followed by a device-writable byte stream. The readable stream is
//! the 16-byte request header followed by the OUT payload (data to write, or
//! discard/write-zeroes segments); the writable stream is the IN payload (data
//! read, or the GET_ID serial) followed by the status byte, which is the last
//! byte of the last descriptor.
//!
//! Everything here treats the chain as hostile: descriptor loops and
//! oversized chains end the walk, addresses are checked against guest memory
//! before any I/O, lengths are summed with overflow checks.

use std::ops::Deref;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Size of the request header (`struct virtio_blk_outhdr`).
pub const REQUEST_HEADER_LEN: usize = 16;

/// A request's command, from the header's `type` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestType {
    /// VIRTIO_BLK_T_IN: read sectors into the writable payload.
    In,
    /// VIRTIO_BLK_T_OUT: write the readable payload to sectors.
    Out,
    /// VIRTIO_BLK_T_FLUSH: make previous writes durable.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: return the 20-byte serial.
    GetId,
    /// VIRTIO_BLK_T_DISCARD: segments in the readable payload.
    Discard,
    /// VIRTIO_BLK_T_WRITE_ZEROES: segments in the readable payload.
    WriteZeroes,
    /// Any other type: answered with VIRTIO_BLK_S_UNSUPP.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            VIRTIO_BLK_T_DISCARD => RequestType::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => RequestType::WriteZeroes,
            other => RequestType::Unsupported(other),
        }
    }
}

/// One contiguous guest buffer of a request payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestBuffer {
    /// Guest physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a chain is not a valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain yielded no descriptor (unreadable table, bad head index,
    /// empty indirect table).
    #[error("descriptor chain is empty or its descriptor table is unreadable")]
    EmptyChain,
    /// The walk stopped on a descriptor that still points to a next one: a
    /// loop, a next index outside the table, an unreadable descriptor, a bad
    /// indirect table, or more than 4 GiB in total.
    #[error("descriptor chain does not terminate (loop, bad next index, bad indirect table or over 4 GiB)")]
    Unterminated,
    /// The last descriptor is not device-writable or has length 0.
    #[error("last descriptor is not a device-writable status byte (flags {flags:#x}, len {len})")]
    NoStatusByte {
        /// Flags of the last descriptor.
        flags: u16,
        /// Length of the last descriptor.
        len: u32,
    },
    /// The status byte is outside guest memory.
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutsideMemory(u64),
    /// More descriptors than the device accepts in one request. The walk
    /// stops at the first descriptor past the limit, so the status byte is
    /// not known and the chain is returned unused.
    #[error("descriptor chain has more than {max} descriptors")]
    TooManyDescriptors {
        /// The limit.
        max: usize,
    },
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    /// The readable part is shorter than the request header.
    #[error("request header needs {REQUEST_HEADER_LEN} device-readable bytes, chain has {0}")]
    HeaderTooShort(u64),
    /// A buffer lies (partly) outside guest memory or wraps around.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    BufferOutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
}

/// A parse failure, with the status byte when one can be written to report
/// it (`VIRTIO_BLK_S_IOERR`); without one the chain is returned unused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    /// What was wrong.
    pub error: RequestError,
    /// Where the status byte is, if the chain has a usable one.
    pub status: Option<GuestAddress>,
}

/// A parsed virtio-blk request whose buffers are all inside guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Head descriptor index, for the used ring.
    pub head_index: u16,
    /// The command.
    pub request_type: RequestType,
    /// First sector (512 bytes) the command applies to.
    pub sector: u64,
    /// Device-readable payload after the header.
    pub readable: Vec<GuestBuffer>,
    /// Device-writable payload before the status byte.
    pub writable: Vec<GuestBuffer>,
    /// Address of the status byte.
    pub status: GuestAddress,
}

/// What to put on the used ring for one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Head descriptor index of the chain.
    pub head_index: u16,
    /// Bytes written to guest memory (payload + status byte); 0 when the
    /// chain had no usable status byte.
    pub used_len: u32,
    /// The status byte written, if any.
    pub status: Option<u8>,
}

/// The payload a request moved: `read` from the disk into the guest,
/// `written` from the guest onto the disk (0 for other requests and
/// failures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfer {
    pub read: u64,
    pub written: u64,
}

impl Transfer {
    /// What `request`, done with `written` bytes into the guest, moved.
    pub fn of(request: &Request, written: u32) -> Self {
        match request.request_type {
            RequestType::In => Transfer {
                read: u64::from(written),
                written: 0,
            },
            RequestType::Out => Transfer {
                read: 0,
                written: total_len(&request.readable),
            },
            _ => Transfer::default(),
        }
    }
}

/// Total length of `buffers`.
pub fn total_len(buffers: &[GuestBuffer]) -> u64 {
    buffers.iter().map(|b| u64::from(b.len)).sum()
}

impl Request {
    /// Parse `chain`, accepting at most `max_descriptors` descriptors.
    ///
    /// The walk stops after `max_descriptors + 1` descriptors, whatever the
    /// queue or indirect table size: an indirect table may hold 65535
    /// entries (and loop inside them), and walking all of them for every
    /// chain would let a guest make each request cost 255 times the work of
    /// the largest valid one. A chain longer than the limit is reported as
    /// [`RequestError::TooManyDescriptors`], without a status byte (finding
    /// it would mean walking the rest); a shorter chain that loops ends
    /// within the queue size and is reported as
    /// [`RequestError::Unterminated`].
    pub fn parse<M>(
        chain: &mut DescriptorChain<M>,
        max_descriptors: usize,
    ) -> Result<Request, ParseError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        let head_index = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut count = 0usize;
        let mut readable_after_writable = false;
        let mut last = None;
        for desc in chain.by_ref() {
            count += 1;
            if count > max_descriptors {
                return Err(ParseError {
                    error: RequestError::TooManyDescriptors {
                        max: max_descriptors,
                    },
                    status: None,
                });
            }
            let buffer = GuestBuffer {
                addr: desc.addr(),
                len: desc.len(),
            };
            if desc.is_write_only() {
                writable.push(buffer);
            } else {
                readable_after_writable |= !writable.is_empty();
                readable.push(buffer);
            }
            last = Some(desc);
        }

        let mem = chain.memory();
        // The status byte first: every later failure is reported through it.
        let last = last.ok_or(ParseError {
            error: RequestError::EmptyChain,
            status: None,
        })?;
        if last.has_next() {
            return Err(ParseError {
                error: RequestError::Unterminated,
                status: None,
            });
        }
        if !last.is_write_only() || last.len() == 0 {
            return Err(ParseError {
                error: RequestError::NoStatusByte {
                    flags: last.flags(),
                    len: last.len(),
                },
                status: None,
            });
        }
        let status = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|addr| mem.check_range(*addr, 1, Permissions::Write))
            .ok_or(ParseError {
                error: RequestError::StatusOutsideMemory(
                    last.addr()
                        .raw_value()
                        .wrapping_add(u64::from(last.len()) - 1),
                ),
                status: None,
            })?;
        let fail = |error| ParseError {
            error,
            status: Some(status),
        };

        if readable_after_writable {
            return Err(fail(RequestError::ReadableAfterWritable));
        }
        // The status byte is not payload.
        if let Some(tail) = writable.last_mut() {
            tail.len -= 1;
            if tail.len == 0 {
                writable.pop();
            }
        }

        let readable_len = total_len(&readable);
        if readable_len < REQUEST_HEADER_LEN as u64 {
            return Err(fail(RequestError::HeaderTooShort(readable_len)));
        }
        for buffer in &readable {
            check_buffer(mem, buffer, Permissions::Read).map_err(fail)?;
        }
        for buffer in &writable {
            check_buffer(mem, buffer, Permissions::Write).map_err(fail)?;
        }

        let (header, payload) = split_buffers(&readable, REQUEST_HEADER_LEN as u64);
        let mut raw = [0u8; REQUEST_HEADER_LEN];
        let mut filled = 0;
        for buffer in &header {
            let end = filled + buffer.len as usize;
            // Checked above to be inside guest memory.
            mem.read_slice(&mut raw[filled..end], buffer.addr)
                .map_err(|_| {
                    fail(RequestError::BufferOutsideMemory {
                        addr: buffer.addr.raw_value(),
                        len: buffer.len,
                    })
                })?;
            filled = end;
        }
        let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
        Ok(Request {
            head_index,
            request_type: RequestType::from(u32::from_le_bytes([t0, t1, t2, t3])),
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            readable: payload,
            writable,
            status,
        })
    }
}

fn check_buffer<M: GuestMemory + ?Sized>(
    mem: &M,
    buffer: &GuestBuffer,
    access: Permissions,
) -> Result<(), RequestError> {
    let outside = RequestError::BufferOutsideMemory {
        addr: buffer.addr.raw_value(),
        len: buffer.len,
    };
    if buffer.len == 0 {
        return Ok(());
    }
    // Reject wrap-around explicitly; check_range then checks every byte.
    buffer
        .addr
        .checked_add(u64::from(buffer.len) - 1)
        .ok_or(outside.clone())?;
    if mem.check_range(buffer.addr, buffer.len as usize, access) {
        Ok(())
    } else {
        Err(outside)
    }
}

/// Split `buffers` after `at` bytes: (first `at` bytes, the rest). Zero-length
/// buffers are dropped.
pub(crate) fn split_buffers(
    buffers: &[GuestBuffer],
    at: u64,
) -> (Vec<GuestBuffer>, Vec<GuestBuffer>) {
    let mut head = Vec::new();
    let mut tail = Vec::new();
    let mut remaining = at;
    for buffer in buffers.iter().filter(|b| b.len > 0) {
        if remaining == 0 {
            tail.push(*buffer);
        } else if u64::from(buffer.len) <= remaining {
            remaining -= u64::from(buffer.len);
            head.push(*buffer);
        } else {
            // remaining < buffer.len <= u32::MAX here.
            let first = remaining as u32;
            head.push(GuestBuffer {
                addr: buffer.addr,
                len: first,
            });
            tail.push(GuestBuffer {
                addr: GuestAddress(buffer.addr.raw_value().wrapping_add(u64::from(first))),
                len: buffer.len - first,
            });
            remaining = 0;
        }
    }
    (head, tail)
}
