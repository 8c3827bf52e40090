//! Target `frame`: the protocol frame decoder (`decode_header`, `decode`)
//! and the message enums deserialized from the body.
//!
//! The input is tried twice: as a whole frame (header and body as the bytes
//! come), and as a body behind a valid header, so the JSON layer is reached
//! without the fuzzer first having to find the magic. Every message that
//! decodes must encode again and decode to an equal message; a header that
//! decodes must be within the limits and re-encode to the same 12 bytes.

use parvm_protocol::frame::{decode, decode_header, encode, encode_header};
use parvm_protocol::{
    ManagerToVios, ManagerToVmm, ProtocolError, Request, Response, ToManager, HEADER_LEN, MAX_FDS,
    MAX_FRAME, VERSION,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;

pub fn frame(data: &[u8]) {
    if let Some(head) = data.get(..HEADER_LEN).and_then(|h| h.try_into().ok()) {
        if let Ok(h) = decode_header(head) {
            assert_eq!(h.version, VERSION);
            assert!(h.len <= MAX_FRAME && h.fds <= MAX_FDS, "{h:?}");
            let again = encode_header(h.version, h.fds, h.len);
            assert!(
                matches!(again, Ok(ref a) if a == head),
                "{h:?} re-encodes differently"
            );
        }
    }
    all_messages(data);
    if data.len() <= MAX_FRAME {
        let mut framed = Vec::with_capacity(HEADER_LEN + data.len());
        if let Ok(head) = encode_header(VERSION, 0, data.len()) {
            framed.extend_from_slice(&head);
            framed.extend_from_slice(data);
            all_messages(&framed);
        }
    }
}

fn all_messages(bytes: &[u8]) {
    round_trip::<Request>(bytes);
    round_trip::<Response>(bytes);
    round_trip::<ToManager>(bytes);
    round_trip::<ManagerToVmm>(bytes);
    round_trip::<ManagerToVios>(bytes);
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
    let Ok(msg) = decode::<T>(bytes) else { return };
    match encode(&msg, 0) {
        Ok(frame) => match decode::<T>(&frame) {
            Ok(back) => assert_eq!(back, msg, "a decoded message does not survive a round trip"),
            Err(e) => panic!("{msg:?} encodes to a frame that does not decode: {e}"),
        },
        // A body may grow when encoded again (`1e5` becomes `100000.0`).
        Err(ProtocolError::TooLarge(_)) => {}
        Err(e) => panic!("{msg:?} does not encode: {e}"),
    }
}
