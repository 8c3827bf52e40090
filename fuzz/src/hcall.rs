//! Target `hcall`: the decoder of the hcall page's register file
//! (`vmm::grants::decode_call`, docs/hcall.md).
//!
//! Input: the opcode (4 bytes, little endian) then the register file (0xa0
//! bytes, zero-padded). A call that decodes must carry a valid name where
//! it has one, must come out the same when its arguments are written back
//! into a fresh register file and decoded again, and must cross the
//! protocol (`ToManager::Hcall` in a frame) unchanged. A refused call gets
//! one of the two documented statuses.

use parvm_protocol::frame::{decode, encode};
use parvm_protocol::grant::status;
use parvm_protocol::{GrantCookie, Hcall, Rights, ToManager};
use vmm::grants::{decode_call, op, regs};

const FILE_LEN: usize = regs::END as usize;

pub fn hcall(data: &[u8]) {
    let mut input = crate::Input::new(data);
    let opcode = input.u32();
    let mut file = [0u8; FILE_LEN];
    let rest = input.bytes(FILE_LEN);
    file[..rest.len()].copy_from_slice(rest);

    let call = match decode_call(opcode, &file) {
        Ok(call) => call,
        Err(s) => {
            assert!(
                s == status::BAD_OPCODE || s == status::BAD_ARGUMENT,
                "status {s}"
            );
            return;
        }
    };
    if let Hcall::Grant { grantee: name, .. }
    | Hcall::Regrant { grantee: name, .. }
    | Hcall::SegmentCreate { id: name, .. } = &call
    {
        assert!(
            !name.is_empty()
                && name.len() < regs::NAME_LEN as usize
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "name {name:?}"
        );
    }
    let (again_op, again_file) = registers_of(&call);
    assert_eq!(again_op, opcode);
    assert_eq!(
        decode_call(again_op, &again_file).as_ref(),
        Ok(&call),
        "the call does not survive its own register file"
    );
    let msg = ToManager::Hcall { seq: 1, call };
    let frame = encode(&msg, 0).unwrap_or_else(|e| panic!("{msg:?} does not encode: {e}"));
    assert_eq!(decode::<ToManager>(&frame).ok(), Some(msg));
}

/// The opcode and register file a guest writes for `call` (docs/hcall.md).
fn registers_of(call: &Hcall) -> (u32, [u8; FILE_LEN]) {
    let mut f = [0u8; FILE_LEN];
    let mut put = |offset: u64, bytes: &[u8]| {
        let o = offset as usize;
        f[o..o + bytes.len()].copy_from_slice(bytes);
    };
    let rights = |r: &Rights| match r {
        Rights::Ro => 1u64,
        Rights::Rw => 2u64,
    };
    let cookie = |c: &GrantCookie| c.0;
    let opcode = match call {
        Hcall::Grant {
            segment,
            grantee,
            rights: r,
        } => {
            put(regs::ARG0, &segment.to_le_bytes());
            put(regs::ARG1, &rights(r).to_le_bytes());
            put(regs::NAME, grantee.as_bytes());
            op::GRANT
        }
        Hcall::Accept { cookie: c, gpa } => {
            put(regs::ARG0, &gpa.unwrap_or(0).to_le_bytes());
            put(regs::COOKIE, &cookie(c));
            op::ACCEPT
        }
        Hcall::Regrant {
            cookie: c,
            grantee,
            rights: r,
        } => {
            put(regs::COOKIE, &cookie(c));
            put(regs::ARG1, &rights(r).to_le_bytes());
            put(regs::NAME, grantee.as_bytes());
            op::REGRANT
        }
        Hcall::Revoke { cookie: c } => {
            put(regs::COOKIE, &cookie(c));
            op::REVOKE
        }
        Hcall::Copy {
            src,
            src_offset,
            dst,
            dst_offset,
            len,
        } => {
            put(regs::COOKIE, &cookie(src));
            put(regs::COOKIE2, &cookie(dst));
            put(regs::ARG0, &src_offset.to_le_bytes());
            put(regs::ARG1, &dst_offset.to_le_bytes());
            put(regs::ARG2, &len.to_le_bytes());
            op::COPY
        }
        Hcall::SegmentCreate { id, size, gpa } => {
            put(regs::ARG0, &size.to_le_bytes());
            put(regs::ARG1, &gpa.unwrap_or(0).to_le_bytes());
            put(regs::NAME, id.as_bytes());
            op::SEGMENT_CREATE
        }
    };
    (opcode, f)
}
