"""Zips built byte by byte, so a test can declare sizes, flags and methods no zip writer would produce."""
from __future__ import annotations

import io
import struct
import zlib

MiB = 1 << 20


def deflate_zeros(mib: int) -> tuple[bytes, int]:
    """A raw deflate stream of `mib` MiB of zeros (~1 KB per MiB) and its CRC-32, built without inflating."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = co.compress(b"\0" * MiB) + co.flush(zlib.Z_FULL_FLUSH)
    crc, zeros = 0, b"\0" * MiB
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return block * mib + co.flush(), crc


def deflate_mixed(mib: int, random_kib: int = 20) -> tuple[bytes, int]:
    """A raw deflate stream of `mib` MiB, each MiB `random_kib` KiB of random bytes then zeros (~50x ratio:
    under the bomb limit, so it is accepted and streamed), and its CRC-32."""
    import os

    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    parts, crc = [], 0
    for _ in range(mib):
        chunk = os.urandom(random_kib << 10) + b"\0" * (MiB - (random_kib << 10))
        crc = zlib.crc32(chunk, crc)
        parts.append(co.compress(chunk))
    parts.append(co.flush())
    return b"".join(parts), crc


def raw_zip(entries: list[dict]) -> bytes:
    """A zip from entries {name, data, [usize, crc, method, flags, mode]}: headers say what we are told."""
    out, central = io.BytesIO(), io.BytesIO()
    for e in entries:
        name = e["name"].encode()
        data = e["data"]
        usize, crc = e.get("usize", len(data)), e.get("crc", zlib.crc32(data))
        method, flags = e.get("method", 0), e.get("flags", 0)
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, len(data), usize,
                              len(name), 0) + name + data)
        central.write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, flags, method, 0, 0x21,
                                  crc, len(data), usize, len(name), 0, 0, 0, 0, e.get("mode", 0o100644) << 16,
                                  offset) + name)
    cd = central.getvalue()
    start = out.tell()
    out.write(cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), start, 0))
    return out.getvalue()
