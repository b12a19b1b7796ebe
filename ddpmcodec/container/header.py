"""The .ddpm container: a compact binary header followed by the payload (rANS stack words, top first; a
progressive file's top word is trimmed to its significant bytes, see entropy.stack_to_bytes).

Layout: magic b"DDP" | version u8 | model id (4 bytes) | flags u8 | varints | [settings] | [x_0 layer fields]
| header check (2 bytes) | file check (2 bytes) | payload. Both checks are the low 16 bits of CRC-32: the first
over the header (always verified, so a damaged length field cannot pass as a partial file), the second over the
header and the whole payload (verified when the payload is complete).
Settings that equal DEFAULTS are omitted (flag bit), so a default file spends ~17 bytes on its header: at CIFAR
size every byte is ~0.003 bits/dim. A file whose payload is shorter than the header says is a *prefix* (e.g. a
partial download): the decoder then decodes only the steps fully present and says so.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from ddpmcodec.errors import FormatError

MAGIC = b"DDP"
VERSION = 2
MODEL_ID_BYTES = 4
CRC_BYTES = 4
MODE_PROGRESSIVE = 0
MODE_BITSBACK = 1
PRIOR_KINDS = ("fixedlarge", "calibrated")
SOURCE_MODES = ("RGB", "L")  # what decode writes: RGB, or grayscale stored as equal R=G=B
DEFAULTS = {"n_steps": 50, "t_end": 4, "budget_bits": 12, "margin_bits": 0, "seed": 0}
_F_LOSSLESS, _F_GRAY, _F_CALIBRATED, _F_CUSTOM = 0x04, 0x08, 0x10, 0x20


def write_varint(out: io.BytesIO, value: int) -> None:
    if value < 0:
        raise ValueError("varint must be non-negative")
    while True:
        byte = value & 0x7F
        value >>= 7
        out.write(bytes([byte | (0x80 if value else 0)]))
        if not value:
            return


def read_varint(buf: io.BytesIO) -> int:
    shift, value = 0, 0
    while True:
        b = buf.read(1)
        if not b:
            raise FormatError("truncated header")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise FormatError("corrupt header (varint too long)")


@dataclass
class Header:
    """Everything a decoder needs besides the model."""

    mode: int  # MODE_PROGRESSIVE | MODE_BITSBACK
    model_id: bytes  # MODEL_ID_BYTES: prefix of the codec identity (weights + profile)
    width: int
    height: int
    source_mode: int  # index into SOURCE_MODES
    tile: int  # model resolution; image padded to multiples of it
    n_steps: int  # schedule parameter (equal-KL quantiles)
    t_end: int  # last coded timestep; x_0 is coded directly from x_{t_end}
    steps_present: int  # coded steps (transitions) in the payload, 0..len(schedule)-1
    lossless: int  # 1 when the x_0 layer follows the last step
    budget_bits: int
    margin_bits: int
    prior_kind: int  # index into PRIOR_KINDS
    seed: int
    pixel_crc: int  # low 16 bits of the CRC-32 of the original pixels (stored only when lossless)
    payload_bytes: int  # length of the complete payload

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in DEFAULTS}

    def pack_body(self) -> bytes:
        if len(self.model_id) != MODEL_ID_BYTES or self.mode > 3 or not 0 < self.budget_bits < 16 or not (
                0 <= self.margin_bits < 16):
            raise ValueError("header field out of range")
        custom = self.settings() != DEFAULTS
        flags = (self.mode | _F_LOSSLESS * bool(self.lossless) | _F_GRAY * (self.source_mode == 1)
                 | _F_CALIBRATED * (self.prior_kind == 1) | _F_CUSTOM * custom)
        out = io.BytesIO()
        out.write(self.model_id + bytes([flags]))
        for v in (self.width - 1, self.height - 1, self.tile, self.steps_present, self.payload_bytes):
            write_varint(out, v)
        if custom:
            for v in (self.n_steps, self.t_end, self.budget_bits << 4 | self.margin_bits, self.seed):
                write_varint(out, v)
        if self.lossless:
            out.write((self.pixel_crc & 0xFFFF).to_bytes(2, "little"))
        return out.getvalue()

    @classmethod
    def unpack_body(cls, buf: io.BytesIO) -> "Header":
        head = buf.read(MODEL_ID_BYTES + 1)
        if len(head) != MODEL_ID_BYTES + 1:
            raise FormatError("truncated header")
        flags = head[-1]
        if flags & 0xC0:
            raise FormatError("corrupt header (unknown flags)")
        w, h, tile, present, size = (read_varint(buf) for _ in range(5))
        settings = dict(DEFAULTS)
        if flags & _F_CUSTOM:
            n_steps, t_end, bm, seed = (read_varint(buf) for _ in range(4))
            settings.update(n_steps=n_steps, t_end=t_end, budget_bits=bm >> 4, margin_bits=bm & 15, seed=seed)
        crc = 0
        if flags & _F_LOSSLESS:
            extra = buf.read(2)
            if len(extra) != 2:
                raise FormatError("truncated header")
            crc = int.from_bytes(extra, "little")
        return cls(mode=flags & 3, model_id=head[:MODEL_ID_BYTES], width=w + 1, height=h + 1,
                   source_mode=int(bool(flags & _F_GRAY)), tile=tile, steps_present=present,
                   lossless=int(bool(flags & _F_LOSSLESS)), prior_kind=int(bool(flags & _F_CALIBRATED)),
                   pixel_crc=crc, payload_bytes=size, **settings)


def _header_check(prefix: bytes) -> bytes:
    return (zlib.crc32(prefix) & 0xFFFF).to_bytes(2, "little")


def _file_check(prefix: bytes, payload: bytes) -> bytes:
    return (zlib.crc32(payload, zlib.crc32(prefix)) & 0xFFFF).to_bytes(2, "little")


def pack(header: Header, payload: bytes) -> bytes:
    if len(payload) != header.payload_bytes:
        raise ValueError("payload length does not match header")
    prefix = MAGIC + bytes([VERSION]) + header.pack_body()
    return prefix + _header_check(prefix) + _file_check(prefix, payload) + payload


@dataclass
class Parsed:
    header: Header
    header_bytes: int  # size of everything before the payload
    payload: bytes  # as present in the file (may be shorter than declared for a prefix)
    complete: bool  # payload fully present and CRC verified


def unpack(data: bytes) -> Parsed:
    """Parse and verify; raises FormatError with a one-line reason."""
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise FormatError("not a .ddpm file (bad magic)")
    version = data[len(MAGIC)]
    if version != VERSION:
        raise FormatError(f"unsupported .ddpm format version {version} (this build reads version {VERSION})")
    buf = io.BytesIO(data[len(MAGIC) + 1:])
    header = Header.unpack_body(buf)
    body_end = len(MAGIC) + 1 + buf.tell()
    crc = data[body_end: body_end + CRC_BYTES]
    if len(crc) != CRC_BYTES:
        raise FormatError("truncated header")
    payload = data[body_end + CRC_BYTES:]
    if _header_check(data[:body_end]) != crc[:2]:
        raise FormatError("corrupt file (header check failed)")
    _validate(header)
    declared = header.payload_bytes
    if len(payload) > declared:
        raise FormatError("corrupt file (trailing bytes after the payload)")
    complete = len(payload) == declared
    if complete and _file_check(data[:body_end], payload) != crc[2:]:
        raise FormatError("corrupt file (CRC mismatch)")
    return Parsed(header, body_end + CRC_BYTES, payload, complete)


def _validate(h: Header) -> None:
    checks = [
        (h.mode in (MODE_PROGRESSIVE, MODE_BITSBACK), "unknown coding mode"),
        (h.width <= 1 << 16 and h.height <= 1 << 16, "implausible image size"),
        (1 <= h.tile <= 4096, "implausible tile size"),
        (h.budget_bits >= 1, "implausible channel settings"),
        (h.payload_bytes < 1 << 42 and h.n_steps < 1 << 20 and h.t_end < 1 << 20, "implausible sizes"),
    ]
    for ok, msg in checks:
        if not ok:
            raise FormatError(f"corrupt header ({msg})")
