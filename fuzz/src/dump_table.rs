//! Target `dump_table`: the table at the start of a dump disk
//! (`parvm_protocol::dump::decode`, docs/dump.md), which the manager reads
//! back from a disk image (outside input) for `parctl dumps` and
//! `dump-get`.
//!
//! Input: the disk's capacity (8 bytes, little endian; at least 1 MiB is
//! added so small values still describe a disk) then the table's bytes. A
//! table that decodes must describe only dumps inside the disk, must come
//! out the same when encoded and decoded again, and must take a new dump
//! (`place` + `merge`) and still decode.

use parvm_protocol::dump::{decode, encode, DumpState, DUMP_ALIGN, TABLE_BYTES};

pub fn dump_table(data: &[u8]) {
    let mut input = crate::Input::new(data);
    let capacity = (input.u64() >> 16).saturating_add(1 << 20);
    let bytes = input.bytes(TABLE_BYTES as usize);
    let Ok(mut table) = decode(bytes, capacity) else {
        return;
    };
    for d in &table.dumps {
        let end = d
            .offset
            .checked_add(d.size)
            .unwrap_or_else(|| panic!("end overflows: {d:?}"));
        assert!(end <= capacity && d.offset >= TABLE_BYTES, "{d:?}");
        assert!(d.offset % DUMP_ALIGN == 0 && d.written <= d.size, "{d:?}");
    }
    let again = encode(&table).unwrap_or_else(|e| panic!("a decoded table does not encode: {e}"));
    assert_eq!(decode(&again, capacity).as_ref(), Ok(&table));
    let size = capacity / 4;
    if let Ok((id, offset)) = table.place(size, capacity) {
        let mut rec = table.dumps.first().cloned().unwrap_or_else(|| {
            serde_json::from_value(serde_json::json!({
                "id": 1, "partition": "p", "trigger": "triple_fault", "reason": "r",
                "state": "writing", "started_ms": 0, "offset": DUMP_ALIGN, "size": 0,
                "written": 0, "ram_bytes": 0, "zero_bytes": 0
            }))
            .unwrap_or_else(|e| panic!("a record: {e}"))
        });
        rec.id = id;
        rec.offset = offset;
        rec.size = size;
        rec.written = 0;
        rec.state = DumpState::Writing;
        let next = table.next_id;
        table.merge(&rec, next);
        let bytes =
            encode(&table).unwrap_or_else(|e| panic!("a placed table does not encode: {e}"));
        assert_eq!(decode(&bytes, capacity).as_ref(), Ok(&table));
    }
}
