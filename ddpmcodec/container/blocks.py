"""Block checks inside a .ddpm payload, so that a partial download verifies every complete block it holds.

The coder's payload (P bytes) is cut at fixed offsets 256, 768, 1792, ... (blocks of 256 bytes doubling up to
64 KiB, then 64 KiB each); after each cut that lies strictly inside the payload the stored stream carries a
2-byte check: the low 16 bits of a CRC-32 over the model id, the header (without its whole-file check field) and
everything stored before it. The last block needs none: the header's whole-file check covers the complete file.
So a file of up to 256 payload bytes (a small lossy 32x32 file) carries no block check at all, a lossless 32x32
file (~1.7 kB) carries two (4 bytes), and a partial download can trust exactly the blocks whose checks it holds.
"""
from __future__ import annotations

import zlib

FIRST_BLOCK = 256  # payload bytes in the first block
MAX_BLOCK = 1 << 16  # block size stops doubling here
CHECK_BYTES = 2


def block_ends(payload_bytes: int) -> list[int]:
    """Payload offsets strictly inside a payload of this size after which a check is stored (ascending)."""
    ends, end, size = [], 0, FIRST_BLOCK
    while end + size < payload_bytes:
        end += size
        ends.append(end)
        size = min(2 * size, MAX_BLOCK)
    return ends


def stored_size(payload_bytes: int) -> int:
    """Bytes the payload occupies in the file, block checks included."""
    return payload_bytes + CHECK_BYTES * len(block_ends(payload_bytes))


def check16(crc: int) -> bytes:
    return (crc & 0xFFFF).to_bytes(CHECK_BYTES, "little")


def insert_checks(payload: bytes, crc_start: int) -> bytes:
    """The stored stream: payload with a check after every block end. crc_start: CRC-32 of what precedes it."""
    out, crc, start = bytearray(), crc_start, 0
    for end in block_ends(len(payload)):
        piece = payload[start:end]
        crc = zlib.crc32(piece, crc)
        check = check16(crc)
        crc = zlib.crc32(check, crc)
        out += piece + check
        start = end
    out += payload[start:]
    return bytes(out)


def split_stored(stored: bytes, payload_bytes: int, crc_start: int | None) -> tuple[bytes, int, int | None]:
    """Walk a stored stream (possibly cut short) of a payload of `payload_bytes`.

    Returns (payload bytes present, how many of them lie in verified blocks, index of the first block whose check
    fails or None). With crc_start None nothing is verified (no model id to check against): every present byte
    counts as unverified and the verified count is 0.
    """
    payload, crc, pos, verified = bytearray(), crc_start, 0, 0
    start = 0
    for k, end in enumerate(block_ends(payload_bytes)):
        size = end - start
        piece = stored[pos: pos + size]
        payload += piece
        if len(piece) < size:
            return bytes(payload), verified, None
        check = stored[pos + size: pos + size + CHECK_BYTES]
        if len(check) < CHECK_BYTES:
            return bytes(payload), verified, None
        if crc is not None:
            crc = zlib.crc32(piece, crc)
            if check16(crc) != check:
                return bytes(payload), verified, k
            crc = zlib.crc32(check, crc)
            verified = end
        pos += size + CHECK_BYTES
        start = end
    payload += stored[pos:]
    return bytes(payload), verified, None


def stored_prefix_for(payload_needed: int, payload_bytes: int) -> int:
    """Stored bytes a plain prefix needs so that its first `payload_needed` payload bytes lie in verified blocks
    (the whole stored stream when they reach into the last block, which only the whole-file check covers)."""
    ends = block_ends(payload_bytes)
    for k, end in enumerate(ends):
        if end >= payload_needed:
            return end + CHECK_BYTES * (k + 1)
    return stored_size(payload_bytes)
