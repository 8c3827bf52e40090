//! The hcall page's guest ABI (docs/hcall.md): register offsets, opcodes,
//! and the decoder that turns a filled-in register file into the [`Hcall`]
//! the manager carries out, or a status for a call that cannot be.

use parvm_protocol::grant::status;
use parvm_protocol::{GrantCookie, Hcall, Rights};

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
}
