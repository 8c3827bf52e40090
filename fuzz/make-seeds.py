#!/usr/bin/env python3
"""Writes the seeds of fuzz/corpus/TARGET/ (docs/fuzzing.md): small, hand-made
inputs that reach the interesting paths of each target. Run from anywhere:
`python3 fuzz/make-seeds.py`; it rewrites the seed files it owns."""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- frame: whole frames, and bare JSON bodies ---------------------------
def frame(body, fds=0):
    body = json.dumps(body, separators=(",", ":")).encode() if not isinstance(body, bytes) else body
    return b"PRVM" + struct.pack("<HHI", 1, fds, len(body)) + body


COOKIE = "pvg1-" + "0123456789abcdef" * 2
frames = {
    "list": {"op": "list"},
    "start": {"op": "start", "name": "p1"},
    "define": {"op": "define", "definition": {"name": "a", "kernel": "/k", "vcpus": 2},
               "restart": "on-failure", "segments": [{"id": "buf", "size_kib": 128}]},
    "grant": {"op": "grant", "segment": "a/buf", "grantee": "b", "rights": "rw"},
    "accept": {"op": "accept", "cookie": COOKIE, "partition": "b", "gpa": 3758096384},
    "copy": {"op": "copy", "partition": "b", "src": COOKIE, "src_offset": 0,
             "dst": COOKIE, "dst_offset": 4096, "len": 16},
    "console-input": {"op": "console_input", "data": [104, 105, 10]},
    "hello": {"msg": "hello", "version": 1, "name": "p1", "pid": 42},
    "hcall": {"msg": "hcall", "seq": 7, "call": {"call": "grant", "segment": 0,
                                                 "grantee": "bob", "rights": "ro"}},
    "exit": {"msg": "exit", "status": {"kind": "crash", "reason": "triple fault"}, "code": 2},
    "map": {"msg": "map", "key": "grant:1", "gpa": 3758096384, "size": 131072, "read_only": True},
    "hcall-done": {"msg": "hcall_done", "seq": 7,
                   "outcome": {"status": 0, "result0": 1, "result1": 2, "cookie": COOKIE}},
    "doorbell": {"msg": "doorbell", "id": "ping", "ring": 0, "vector": 33},
    "response-grants": {"result": "grants", "segments": [], "grants": []},
    "error": {"result": "error", "kind": "unknown_cookie", "message": "no"},
}
for name, msg in frames.items():
    put("frame", name + ".frame", frame(msg))
put("frame", "body-vios-connect.json", json.dumps({"msg": "vios_connect", "disk": "d0", "client": "c"}))
put("frame", "body-share.json", json.dumps({"op": "share", "config": {"segments": [], "doorbells": []}}))
put("frame", "fds.frame", frame({"op": "logs", "name": "p1"}, fds=1))
put("frame", "bad-version.frame", b"PRVM\x02\x00\x00\x00\x02\x00\x00\x00{}")

# --- definition ----------------------------------------------------------
defs = {
    "full.json": {"name": "a", "vcpus": 2, "memory_mib": 64, "kernel": "k.elf", "initrd": "/abs/i",
                  "cmdline": "console=ttyS0", "console": "log.txt"},
    "disks.json": {"name": "d", "kernel": "/boot/vmlinuz", "disks": [
        {"id": "root", "path": "r.img"}, {"id": "data", "path": "/d.img", "read_only": True},
        {"id": "vu", "path": "vhost-user:vios.sock"}, {"id": "fd", "path": "vhost-user-fd:4"},
        {"id": "vios", "path": "vios:vios0/disk0"}]},
    "segments.json": {"name": "alice", "kernel": "/bin/sh", "restart": "on-failure",
                      "segments": [{"id": "buf", "size_kib": 128, "gpa": 3758096384},
                                   {"id": "ring", "size": 8192}]},
    "console-none.json": {"name": "n", "kernel": "/k", "console": "none", "vcpus": 254,
                          "memory_mib": 1048576},
    "vios.json": {"kind": "vios", "name": "vios0", "queues": 2, "console": "log",
                  "disks": [{"id": "disk0", "path": "d.img"}, {"id": "disk1", "path": "/e.img",
                                                                "read_only": True}]},
}
for name, d in defs.items():
    put("definition", name, json.dumps(d, indent=1))
put("definition", "bad-field.json", '{"kernel":"k","memroy_mib":5}')
put("definition", "bad-vcpus.json", '{"kernel":"k","vcpus":0,"disks":[{"id":"a b","path":"x"}]}')

# --- hcall: opcode, then the register file --------------------------------
def regs(opcode, **f):
    r = bytearray(0xa0)
    r[0:4] = struct.pack("<I", 0x48435650)
    r[4:8] = struct.pack("<I", 1)
    off = {"arg0": 0x10, "arg1": 0x18, "arg2": 0x20, "arg3": 0x28}
    for k, v in f.items():
        if k in off:
            r[off[k]:off[k] + 8] = struct.pack("<Q", v)
        elif k == "cookie":
            r[0x40:0x50] = v
        elif k == "cookie2":
            r[0x50:0x60] = v
        elif k == "name":
            r[0x60:0x60 + len(v)] = v
    return struct.pack("<I", opcode) + bytes(r)


C1 = bytes(range(16))
C2 = bytes(range(16, 32))
put("hcall", "grant", regs(1, arg0=0, arg1=2, name=b"bob\0"))
put("hcall", "accept", regs(2, arg0=0xe0000000, cookie=C1))
put("hcall", "accept-anywhere", regs(2, cookie=C1))
put("hcall", "regrant", regs(3, arg1=1, cookie=C1, name=b"carol\0"))
put("hcall", "revoke", regs(4, cookie=C1))
put("hcall", "copy", regs(5, arg0=0, arg1=4096, arg2=64, cookie=C1, cookie2=C2))
put("hcall", "segment-create", regs(6, arg0=8192, arg1=0xe0000000, name=b"ring\0"))
put("hcall", "bad-name", regs(1, arg1=1, name=b"b\xffb\0"))

# --- grant_table: operations (see fuzz/src/grant_table.rs) ---------------
# op bytes: 0 create(owner, id, size, gpa) 1 add_block(owner, b) 2 grant(caller,
# resource(owner, b), grantee, rights) 3 accept(caller, cookie, gpa)
# 4 regrant(caller, cookie, grantee, rights) 5 revoke(caller, cookie)
# 6 release(partition) 7 copy(caller, src, dst, so16, do16, len16) 8 forged
A, B, C, V = 0, 1, 2, 3
create_a_s0 = [0, A, 0, 2, 0xe0]
grant_ab = [2, A, A, 0, B, 1]
accept_b = [3, B, 0, 0x10]
regrant_bc = [4, B, 0, C, 0]
accept_c = [3, C, 1, 0x20]
put("grant_table", "grant-accept-regrant", bytes(create_a_s0 + grant_ab + accept_b + regrant_bc + accept_c))
put("grant_table", "revoke-cascade", bytes(create_a_s0 + grant_ab + accept_b + regrant_bc + accept_c + [5, A, 0] + [3, C, 1, 0]))
put("grant_table", "release", bytes(create_a_s0 + grant_ab + accept_b + regrant_bc + [6, B] + [3, C, 1, 0]))
put("grant_table", "escalation", bytes(create_a_s0 + [2, A, A, 0, B, 0] + accept_b + [4, B, 0, C, 1]))
put("grant_table", "copy", bytes(create_a_s0 + [0, A, 1, 1, 0] + [2, A, A, 0, B, 1, 2, A, A, 1, B, 1]
                                 + [3, B, 0, 0, 3, B, 1, 0] + [7, B, 0, 1, 0, 0, 0, 0x10, 0x40, 0]))
put("grant_table", "vios-disk", bytes([1, V, 0x80] + [2, V, V, 0x80, A, 1] + [2, V, V, 0x80, A, 0] + [3, A, 0, 0] + [8, 5]))
put("grant_table", "wrong-partition", bytes(create_a_s0 + grant_ab + [3, C, 0, 0] + [5, C, 0] + [2, B, A, 0, C, 0]))


# --- block: options byte, then guest memory from 0 -------------------------
def block_seed(opts, chains, data=b"", qsize=16, extra=()):
    """chains: lists of (addr, len, flags, next) descriptors placed at
    consecutive indexes; each list is one chain published in the avail ring.
    extra: (addr, bytes) written into memory."""
    mem = bytearray(0x1000)
    avail = qsize * 16
    used = (avail + 6 + 2 * qsize + 3) & ~3
    idx = 0
    heads = []
    for chain in chains:
        heads.append(idx)
        for i, (addr, ln, flags, nxt) in enumerate(chain):
            if nxt is None:
                nxt = idx + 1 if i + 1 < len(chain) else 0
            mem[idx * 16:(idx + 1) * 16] = struct.pack("<QIHH", addr, ln, flags, nxt)
            idx += 1
    mem[avail:avail + 4] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[avail + 4 + 2 * i:avail + 6 + 2 * i] = struct.pack("<H", h)
    for addr, b in extra:
        mem[addr:addr + len(b)] = b
    end = max([used + 8 * qsize + 6] + [a + len(b) for a, b in extra])
    return bytes([opts]) + bytes(mem[:end])


HDR, DATA, STATUS = 0x1c0, 0x200, 0x1ff
R, NEXT, W, IND = 0, 1, 2, 4


def hdr(t, sector):
    return struct.pack("<IIQ", t, 0, sector)


put("block", "read", block_seed(0, [[(HDR, 16, NEXT, None), (DATA, 512, NEXT | W, None), (STATUS, 1, W, None)]],
                                extra=[(HDR, hdr(0, 1))]))
put("block", "write", block_seed(0, [[(HDR, 16, NEXT, None), (DATA, 512, NEXT, None), (STATUS, 1, W, None)]],
                                 extra=[(HDR, hdr(1, 15)), (DATA, b"\x5a" * 64)]))
put("block", "write-short-io", block_seed(0x40, [[(HDR, 16, NEXT, None), (DATA, 1024, NEXT, None), (STATUS, 1, W, None)]],
                                          extra=[(HDR, hdr(1, 2))]))
put("block", "flush-getid", block_seed(0, [[(HDR, 16, NEXT, None), (STATUS, 1, W, None)],
                                           [(HDR + 16, 16, NEXT, None), (DATA, 20, NEXT | W, None), (STATUS + 1, 1, W, None)]],
                                       extra=[(HDR, hdr(4, 0)), (HDR + 16, hdr(8, 0))]))
put("block", "discard", block_seed(2 | 4, [[(HDR, 16, NEXT, None), (DATA, 16, NEXT, None), (STATUS, 1, W, None)],
                                           [(HDR + 16, 16, NEXT, None), (DATA + 16, 16, NEXT, None), (STATUS + 1, 1, W, None)]],
                                   extra=[(HDR, hdr(11, 0)), (HDR + 16, hdr(13, 0)),
                                          (DATA, struct.pack("<QII", 1, 2, 0)), (DATA + 16, struct.pack("<QII", 3, 4, 1))]))
put("block", "read-only-write", block_seed(1, [[(HDR, 16, NEXT, None), (DATA, 512, NEXT, None), (STATUS, 1, W, None)]],
                                           extra=[(HDR, hdr(1, 0))]))
# A split header (8 + 8 bytes) and data in the high region.
put("block", "split-header-high", block_seed(8, [[(HDR, 8, NEXT, None), (HDR + 8, 8, NEXT, None), (0x9000, 512, NEXT | W, None),
                                                  (STATUS, 1, W, None)]], extra=[(HDR, hdr(0, 3))]))
# An indirect table at 0x700 holding the three descriptors.
IND_AT = 0x1d0
ind = struct.pack("<QIHH", HDR, 16, NEXT, 1) + struct.pack("<QIHH", DATA, 512, NEXT | W, 2) + struct.pack("<QIHH", STATUS, 1, W, 0)
put("block", "indirect", block_seed(0, [[(IND_AT, 48, IND, 0)]], extra=[(HDR, hdr(0, 0)), (IND_AT, ind)]))
# Buffers across the hole between the regions, and a looping chain.
put("block", "across-hole", block_seed(0, [[(HDR, 16, NEXT, None), (0x7f00, 0x200, NEXT | W, None), (STATUS, 1, W, None)]],
                                       extra=[(HDR, hdr(0, 0))]))
put("block", "loop", block_seed(0, [[(HDR, 16, NEXT, 1), (DATA, 512, NEXT | W, 0)]], extra=[(HDR, hdr(0, 0))]))


# --- vhost_user: a client session ----------------------------------------
def vu(request, body=b"", flags=1, ctl=0):
    return bytes([ctl]) + struct.pack("<III", request, flags, len(body)) + body


def u64(v):
    return struct.pack("<Q", v)


QS = 8
MEM = 0x10000  # 16 pages: the whole client memory is one region
UADDR = 0x7f0000000000
desc_a, avail_a, used_a = 0x0, 0x100, 0x200
cm = bytearray(0x1000)
chain = [(0x300, 16, NEXT, 1), (0x400, 512, NEXT | W, 2), (0x3ff, 1, W, 0)]
for i, (a, ln, fl, nx) in enumerate(chain):
    cm[desc_a + 16 * i:desc_a + 16 * i + 16] = struct.pack("<QIHH", a, ln, fl, nx)
cm[avail_a:avail_a + 6] = struct.pack("<HHH", 0, 1, 0)
cm[0x300:0x310] = hdr(0, 0)
cm = bytes(cm[:0x310])
features = (1 << 32) | (1 << 30) | (1 << 9)  # VERSION_1, PROTOCOL_FEATURES, FLUSH
protocol = 0x1 | 0x8 | 0x200  # MQ, REPLY_ACK, CONFIG
region = struct.pack("<II", 1, 0) + u64(0) + u64(MEM) + u64(UADDR) + u64(0)
vring_addr = struct.pack("<II", 0, 0) + u64(UADDR + desc_a) + u64(UADDR + used_a) + u64(UADDR + avail_a) + u64(0)
session = [
    vu(3), vu(1), vu(2, u64(features)), vu(15), vu(16, u64(protocol)),
    vu(5, region, ctl=1 | 8 | (15 << 4)),
    vu(8, struct.pack("<II", 0, QS)), vu(9, vring_addr), vu(10, struct.pack("<II", 0, 0)),
    vu(13, u64(0), ctl=1), vu(12, u64(0), ctl=1), vu(18, struct.pack("<II", 0, 1)),
]
config = vu(24, struct.pack("<III", 0, 60, 0) + bytes(60))


def vu_seed(opts, msgs, mem=cm):
    return bytes([opts]) + struct.pack("<H", len(mem)) + mem + b"".join(msgs)


put("vhost_user", "session-read", vu_seed(0, session))
put("vhost_user", "session-read-only", vu_seed(1, session + [config]))
put("vhost_user", "config", vu_seed(2, [vu(3), vu(1), vu(15), vu(16, u64(protocol)), config, vu(17),
                                        vu(25, struct.pack("<III", 0, 4, 0) + bytes(4))], b""))
put("vhost_user", "unsealed-table", vu_seed(0, session[:5] + [vu(5, region, ctl=1 | (15 << 4))]))
put("vhost_user", "table-past-eof", vu_seed(0, session[:5] + [vu(5, region, ctl=1 | 8)]))
put("vhost_user", "add-mem-reg", vu_seed(0, session[:5] + [vu(37, struct.pack("<Q", 0) + region[8:], ctl=1 | 8 | (15 << 4)),
                                                           vu(38, struct.pack("<Q", 0) + region[8:])]))
put("vhost_user", "get-vring-base", vu_seed(0, session + [vu(11, struct.pack("<II", 0, 0))]))


# --- http: what a client sends on the API socket, then it hangs up -------

put("http", "get", "GET /v1/partitions HTTP/1.1\r\nHost: localhost\r\n\r\n")
body = '{"definition":{"name":"a"},"x":[1]}'
put("http", "post-body", "POST /v1/partitions?dry_run=true HTTP/1.1\r\nHost: localhost\r\n"
    "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
put("http", "pipelined", "GET /v1/events?since=3&wait_ms=10 HTTP/1.1\r\nAccept: text/event-stream\r\n"
    "Last-Event-ID: 7\r\n\r\nGET /v1/pool HTTP/1.1\r\nConnection: close\r\n\r\n")
put("http", "short-body", "POST /v1/grants HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nab")
put("http", "chunked", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
put("http", "percent", "GET /v1/partitions/%zz%2Fb HTTP/1.0\r\n\r\n")
# --- dump_table: capacity (u64 LE, shifted right by 16 in the target) then the table
def fnv1a64(b):
    h = 0xcbf29ce484222325
    for x in b:
        h = ((h ^ x) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def dump_table(table, capacity=1 << 40):
    body = json.dumps(table, separators=(",", ":")).encode()
    head = b"PARVMDMP" + struct.pack("<IIQ", 1, len(body), fnv1a64(body)) + bytes(8)
    return struct.pack("<Q", capacity << 16) + head + body


def record(i, offset, size, state="complete"):
    return {"id": i, "partition": "p", "trigger": "pvpanic", "reason": "guest panic",
            "state": state, "started_ms": 1, "offset": offset, "size": size,
            "written": size if state == "complete" else 0, "ram_bytes": 1 << 25,
            "zero_bytes": 1 << 24}


put("dump_table", "empty", dump_table({"next_id": 1, "dumps": []}))
put("dump_table", "two", dump_table({"next_id": 3, "dumps": [record(1, 1 << 20, 5000),
                                                            record(2, 2 << 20, 4096, "writing")]}))
put("dump_table", "near-full", dump_table({"next_id": 2, "dumps": [record(1, 1 << 20, (3 << 20) - 1)]}, 4 << 20))
put("dump_table", "unformatted", struct.pack("<Q", 1 << 30) + bytes(4096))
