"""The .ddpm container (format version 7, and 8 for exact-network files; versions 4 to 6 are read too): a compact header followed by the payload (rANS
stack words, top first; a progressive file's top word is trimmed to its significant bytes, see
entropy.rans.stack_to_bytes).

Layout: format byte 0xD7 (0xD4..0xD6 for versions 4..6) | model tag u8 | flags u8 | varints | [settings, or one
stop-schedule byte] | [pixel check, 2 bytes] | file check (2 bytes; not in lossy version-7 files) | stored payload
(the payload with block checks, see blocks.py).

The model tag is the first byte of the 4-byte codec identity (weights, configs, rate profile); the whole identity
enters every check instead of being stored, so a file read with another model fails its checks (or, 255 times in
256, its tag) and never decodes to garbage. Checks are the low 16 bits of CRC-32, each over everything before it
(the identity, the header, the payload so far): block checks inside the payload, so that a partial download verifies
every complete block it holds, header included; the whole-file check, verified when the file is complete. A file
shorter than its header says that holds no complete checked block cannot be verified at all and is refused: a
damaged length never passes as a partial file. Settings that equal DEFAULTS are omitted, and an image of exactly one
tile stores no size, so a default lossy 32x32 file of version 6 spent 7 bytes on its header (8 with a payload over
127 bytes; version 7: see below and `test_container.py`).
Version-2 and version-3 files (ddpmcodec 0.1 and 0.2) are refused with a message that says so. Version 4 added the
learned x_0 layer (flag 0x80) and moved the default t_end from 4 to 10. Version 5 changed the channel simulation's
candidates to sliding windows (channel.pfr_windows) and the default chunk budget from 12 to 18 bits; the layout is
version 4's, and version-4 files decode as before (their candidates, their defaults: DEFAULTS_BY_VERSION).
Version 6 (ddpmcodec 0.5) adds the stop-schedule byte: a lossy file whose settings differ from the defaults only in
its schedule, with t_end in STOP_GRID and n_steps in STOP_STEP_COUNTS (a file encoded for its stop point, see
schedule.stop_schedules), stores those two in one byte under flag 0x80 (which marks the learned x_0 layer on
lossless files) instead of the 5-6 bytes of the full settings; everything else is version 5's.
Version 8 is version 7 byte for byte, with one meaning added by the version itself: the U-Net ran on integer grids
(network.exact_unet), so lossless files decode exactly on any machine. It is written only for such files
(`--portable`, progressive or bits-back); every other file is still written as version 7, and a version-8 file costs no extra byte.
Version 7 (ddpmcodec 0.6) shortens lossy progressive files by 2 to 3 bytes (`Header.end_checked`), the rest is
version 6's: (1) their whole-file check is the rANS stack's bottom state instead of a header field. The encoder
starts the stack from `end_state` (2^16 + a 16-bit CRC of the identity and the header), and the decoder must pop
every coded step (no network needed) and land on exactly that state with no word left, so any damage to header or
payload, a wrong model or a cut fails as surely as the old field did (about 2^-16). A fresh rANS stack wastes about
three bytes at its bottom anyway (the first symbol pushed onto an empty state costs the coder's 24-bit precision),
and those bits now carry the check. (2) One varint holds steps_present << 1 | implicit: with implicit set (a payload
of at most blocks.FIRST_BLOCK bytes, no block checks) the payload is the rest of the file and its length is not
stored. A cut or an appended byte shifts the stack and fails the end state; longer files store their length and
keep their block checks, so plain prefixes of them still decode. (3) A stop-schedule file that holds all n_steps of
its schedule with an implicit length stores no steps varint at all: flag 0x01 without 0x02 says so (bits-back files,
the other user of 0x01, are always lossless). A default lossy one-tile file then spends 4 header bytes, a file encoded
for its stop 4 as well, against 7 and 8 in version 6.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from ddpmcodec.container import blocks
from ddpmcodec.errors import FormatError, ModelMismatchError

FORMAT_BYTE = 0xD7  # high nibble: .ddpm marker, low nibble: format version (what this build writes)
VERSION = FORMAT_BYTE & 0x0F
READABLE_VERSIONS = (4, 5, 6, 7, 8)
EXACT_NETWORK_VERSION = 8  # written only for files whose network ran on integer grids (Header.exact_network)
LEGACY_MAGIC = b"DDP"  # versions 1-2 started with b"DDP" + a version byte
MODEL_ID_BYTES = 4
MODE_PROGRESSIVE = 0
MODE_BITSBACK = 1
PRIOR_KINDS = ("fixedlarge", "calibrated")
SOURCE_MODES = ("RGB", "L")  # what decode writes: RGB, or grayscale stored as equal R=G=B
DEFAULTS = {"n_steps": 50, "t_end": 10, "budget_bits": 18, "margin_bits": 0, "seed": 0}
# settings a header omits, per version
DEFAULTS_BY_VERSION = {4: {**DEFAULTS, "budget_bits": 12}, 5: DEFAULTS, 6: DEFAULTS, 7: DEFAULTS, 8: DEFAULTS}
# budget + margin: log2 of the candidates per chunk (search work, index tables)
MAX_CANDIDATE_BITS = {4: 20, 5: 20, 6: 20, 7: 20, 8: 20}
MAX_BUDGET_BITS = {4: 15, 5: 20, 6: 20, 7: 20, 8: 20}
MAX_MARGIN_BITS = 12
_F_BITSBACK, _F_LOSSLESS, _F_GRAY, _F_CALIBRATED, _F_CUSTOM, _F_ONE_TILE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
_F_WINDOWED = 0x40  # progressive only: the network ran on overlapping blended windows (ddpmcodec.network.windows)
_F_LEARNED_X0 = 0x80  # lossless progressive only: x_0 coded by the model's learned layer (entropy.x0net)
_F_STOP_SCHEDULE = 0x80  # lossy progressive, version >= 6: one byte gives (n_steps, t_end) from the grids below
_F_WHOLE_STOP = 0x01  # alone among 0x01 | 0x02, version >= 7: a stop-schedule file with all its steps, length implicit
STOP_SCHEDULE_VERSION = 6
END_STATE_VERSION = 7  # lossy progressive files: whole-file check in the stack's bottom state, implicit short length
END_STATE_BASE = 1 << 16  # end states are END_STATE_BASE + a 16-bit check (a non-zero bottom word, 17 bits)
# t_end values a stop-schedule byte can name (its low 6 bits): 64 timesteps spaced about 6.6% apart from 16 to 900
STOP_GRID = tuple(round(16 * (900 / 16) ** (k / 63)) for k in range(64))
STOP_STEP_COUNTS = (4, 8, 12, 16)  # n_steps a stop-schedule byte can name (its high 2 bits)
X0_LAYER_CHOICES = ("auto", "learned", "classic")  # encoder choice of the lossless end (codec.progressive)
RELEASES = {1: "0.1", 2: "0.1", 3: "0.2"}  # older, unreadable format versions and the ddpmcodec release that wrote them
# (version 4, ddpmcodec 0.3, is still read)
MAX_VARINT_BYTES = 10


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
    for _ in range(MAX_VARINT_BYTES):
        b = buf.read(1)
        if not b:
            raise FormatError("truncated header")
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
    raise FormatError("corrupt header (varint too long)")


@dataclass
class Header:
    """Everything a decoder needs besides the model."""

    mode: int  # MODE_PROGRESSIVE | MODE_BITSBACK
    model_id: bytes  # MODEL_ID_BYTES: prefix of the codec identity (weights + profile); only its first byte is stored
    width: int  # 0 when read without the model and the image is one tile (resolved by unpack(..., tile=))
    height: int
    source_mode: int  # index into SOURCE_MODES
    tile: int  # model resolution (not stored: it is part of the model identity)
    n_steps: int  # schedule parameter (equal-KL quantiles)
    t_end: int  # last coded timestep; x_0 is coded directly from x_{t_end}
    steps_present: int  # coded steps (transitions) in the payload, 0..len(schedule)-1
    lossless: int  # 1 when the x_0 layer follows the last step
    budget_bits: int
    margin_bits: int
    prior_kind: int  # index into PRIOR_KINDS
    seed: int
    pixel_crc: int  # low 16 bits of the CRC-32 of the original pixels (stored only when lossless)
    payload_bytes: int  # length of the complete payload (coder bytes, without block checks)
    windowed: int = 0  # 1: eps from overlapping blended windows across tile borders (network.windows), else per tile
    learned_x0: int = 0  # 1: x_0 coded by the model's learned layer (entropy.x0net), else by entropy.pixelmodel
    version: int = VERSION  # format version: 7, or 8 with exact_network; 4..6 for files of ddpmcodec 0.3..0.5

    @property
    def exact_network(self) -> bool:
        """Version 8: the U-Net ran on integer grids (network.exact_unet), the same on every machine."""
        return self.version >= EXACT_NETWORK_VERSION

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in DEFAULTS}

    def defaults(self) -> dict:
        return DEFAULTS_BY_VERSION[self.version]

    def end_checked(self) -> bool:
        """A version-7 lossy progressive file: whole-file check in the stack's bottom state, short lengths implicit."""
        return self.version >= END_STATE_VERSION and self.mode == MODE_PROGRESSIVE and not self.lossless

    def whole_stop_schedule(self, canonical: bool = False) -> bool:
        """An end-checked stop-schedule file holding every step of its schedule with an implicit length (canonical:
        as if implicit): it stores no steps varint and marks this with flag 0x01 alone (_F_WHOLE_STOP)."""
        return (self.end_checked() and self.steps_present == self.n_steps and self.stop_schedule_code() is not None
                and (canonical or self.implicit_length()))

    def implicit_length(self) -> bool:
        """The payload length is the rest of the file (end-checked files with no block check in their payload)."""
        return self.end_checked() and not blocks.block_ends(self.payload_bytes)

    def end_state(self) -> int | None:
        """The state an end-checked file's rANS stack starts from and its decoder must end on (None for other files):
        END_STATE_BASE + the low 16 bits of the CRC-32 of the full identity and the header with its length left
        implicit (the payload length, which depends on this state, does not enter it)."""
        if not self.end_checked():
            return None
        return END_STATE_BASE | (_crc_header(self.model_id, self.pack_body(canonical=True)) & 0xFFFF)

    def pack_body(self, canonical: bool = False) -> bytes:
        """Everything from the format byte up to (not including) the header check; canonical: an end-checked header
        as if its length were implicit (what end_state covers)."""
        if len(self.model_id) != MODEL_ID_BYTES or self.mode not in (0, 1) or self.version not in READABLE_VERSIONS or \
                not 0 < self.budget_bits <= MAX_BUDGET_BITS[self.version] or not 0 <= self.margin_bits < 16:
            raise ValueError("header field out of range")
        if self.mode == MODE_BITSBACK and not self.lossless and self.version >= END_STATE_VERSION:
            raise ValueError("a bits-back header is lossless (flag 0x01 alone means a whole stop schedule)")
        stop_code = self.stop_schedule_code()
        custom = self.settings() != self.defaults() and stop_code is None
        one_tile = self.width == self.height == self.tile
        whole = self.whole_stop_schedule(canonical)
        flags = (_F_BITSBACK * (self.mode or whole) | _F_LOSSLESS * bool(self.lossless)
                 | _F_GRAY * (self.source_mode == 1) | _F_CALIBRATED * (self.prior_kind == 1) | _F_CUSTOM * custom
                 | _F_ONE_TILE * one_tile | _F_WINDOWED * bool(self.windowed)
                 | _F_LEARNED_X0 * bool(self.learned_x0 and self.lossless)
                 | _F_STOP_SCHEDULE * (stop_code is not None))
        out = io.BytesIO()
        out.write(bytes([(FORMAT_BYTE & 0xF0) | self.version, self.model_id[0], flags]))
        sizes = [] if one_tile else [self.width - 1, self.height - 1]
        if not self.end_checked():
            sizes += [self.steps_present, self.payload_bytes]
        elif whole:
            pass
        elif canonical or self.implicit_length():
            sizes += [self.steps_present << 1 | 1]
        else:
            sizes += [self.steps_present << 1, self.payload_bytes]
        for v in sizes:
            write_varint(out, v)
        if custom:
            for v in (self.n_steps, self.t_end, self.budget_bits << 4 | self.margin_bits, self.seed):
                write_varint(out, v)
        if stop_code is not None:
            out.write(bytes([stop_code]))
        if self.lossless:
            out.write((self.pixel_crc & 0xFFFF).to_bytes(2, "little"))
        return out.getvalue()

    def stop_schedule_code(self) -> int | None:
        """The one-byte form of this header's settings (version >= 6, lossy progressive, only n_steps and t_end
        differ from the defaults, both on their grids), else None."""
        if self.version < STOP_SCHEDULE_VERSION or self.mode != MODE_PROGRESSIVE or self.lossless:
            return None
        differing = {k for k, v in self.settings().items() if v != self.defaults()[k]}
        if not differing or not differing <= {"n_steps", "t_end"}:
            return None
        if self.t_end not in STOP_GRID or self.n_steps not in STOP_STEP_COUNTS:
            return None
        return STOP_STEP_COUNTS.index(self.n_steps) << 6 | STOP_GRID.index(self.t_end)

    @classmethod
    def unpack_body(cls, buf: io.BytesIO, model_id: bytes | None, tile: int | None) -> "Header":
        head = buf.read(3)
        if len(head) != 3:
            raise FormatError("truncated header")
        version, tag, flags = head[0] & 0x0F, head[1], head[2]
        whole = version >= END_STATE_VERSION and flags & (_F_BITSBACK | _F_LOSSLESS) == _F_WHOLE_STOP
        if whole:  # bits-back files are always lossless: 0x01 alone is a lossy file holding its whole stop schedule
            flags &= ~_F_BITSBACK
            if not flags & _F_STOP_SCHEDULE:
                raise FormatError("corrupt header (unknown flags)")
        stop_schedule = bool(flags & _F_STOP_SCHEDULE and not flags & _F_LOSSLESS)
        if stop_schedule and (version < STOP_SCHEDULE_VERSION or flags & (_F_CUSTOM | _F_BITSBACK)):
            raise FormatError("corrupt header (unknown flags)")
        one_tile = bool(flags & _F_ONE_TILE)
        if one_tile:
            w = h = tile or 0
        else:
            w, h = read_varint(buf) + 1, read_varint(buf) + 1
        end_checked = version >= END_STATE_VERSION and not flags & (_F_BITSBACK | _F_LOSSLESS)
        if whole:
            present, size = -1, -1  # present: n_steps, once the stop-schedule byte is read
        elif end_checked:
            present = read_varint(buf)
            implicit, present = present & 1, present >> 1
            size = -1 if implicit else read_varint(buf)  # -1: the rest of the file (resolved by unpack)
        else:
            present, size = read_varint(buf), read_varint(buf)
        settings = dict(DEFAULTS_BY_VERSION[version])
        if flags & _F_CUSTOM:
            n_steps, t_end, bm, seed = (read_varint(buf) for _ in range(4))
            settings.update(n_steps=n_steps, t_end=t_end, budget_bits=bm >> 4, margin_bits=bm & 15, seed=seed)
        if stop_schedule:
            code = buf.read(1)
            if not code:
                raise FormatError("truncated header")
            settings.update(n_steps=STOP_STEP_COUNTS[code[0] >> 6], t_end=STOP_GRID[code[0] & 63])
            if whole:
                present = settings["n_steps"]
        crc = 0
        if flags & _F_LOSSLESS:
            extra = buf.read(2)
            if len(extra) != 2:
                raise FormatError("truncated header")
            crc = int.from_bytes(extra, "little")
        ident = model_id if model_id is not None else bytes([tag]) + bytes(MODEL_ID_BYTES - 1)
        return cls(mode=int(bool(flags & _F_BITSBACK)), model_id=ident, width=w, height=h,
                   source_mode=int(bool(flags & _F_GRAY)), tile=tile or 0, steps_present=present,
                   lossless=int(bool(flags & _F_LOSSLESS)), prior_kind=int(bool(flags & _F_CALIBRATED)),
                   pixel_crc=crc, payload_bytes=size, windowed=int(bool(flags & _F_WINDOWED)),
                   learned_x0=int(bool(flags & _F_LEARNED_X0 and flags & _F_LOSSLESS)), version=version, **settings)


def _crc_header(model_id: bytes, body: bytes) -> int:
    return zlib.crc32(body, zlib.crc32(model_id))


def pack(header: Header, payload: bytes) -> bytes:
    """The file: header, [whole-file check], payload with its block checks. An end-checked header's payload must come
    from a stack started at header.end_state() (its check)."""
    if len(payload) != header.payload_bytes:
        raise ValueError("payload length does not match header")
    body = header.pack_body()
    crc = _crc_header(header.model_id, body)
    stored = blocks.insert_checks(payload, crc)
    if header.end_checked():
        return body + stored
    return body + blocks.check16(zlib.crc32(stored, crc)) + stored


@dataclass
class Parsed:
    header: Header
    header_bytes: int  # size of everything before the stored payload
    payload: bytes  # coder bytes to use: all of them for a complete file, the verified blocks of a partial one
    complete: bool  # payload fully present (and, when verified, its whole-file check passed)
    verified: bool  # checks verified against a model identity (False when read without one)
    present_bytes: int  # coder bytes present in the file (>= len(payload) for a partial file)
    end_state: int | None = None  # an end-checked file read with a model: the state its decoder must end on. Its
    # whole-file check is then still to do (codec.decoding.StreamReader pops every step and compares on opening)


def legacy_version(data: bytes) -> int | None:
    """The version byte of a version-1/2 file (b"DDP" + version), else None."""
    if len(data) >= 4 and data[:3] == LEGACY_MAGIC:
        return data[3]
    return None


def unpack(data: bytes, model_id: bytes | None = None, tile: int | None = None) -> Parsed:
    """Parse and verify; raises FormatError (or ModelMismatchError) with a one-line reason.

    With model_id (the decoding model's codec identity) every check is verified and a partial file keeps only its
    verified blocks; without it (a quick look before a model is loaded) nothing can be verified.
    """
    if not data or data[0] >> 4 != FORMAT_BYTE >> 4 or data[0] & 15 not in READABLE_VERSIONS:
        old = legacy_version(data)
        if old is None and data and data[0] >> 4 == FORMAT_BYTE >> 4:
            old = data[0] & 15
        if old in RELEASES:
            raise FormatError(f"this is a version-{old} .ddpm file (written by ddpmcodec {RELEASES[old]}); this build "
                              f"reads versions {', '.join(map(str, READABLE_VERSIONS))}: decode it with ddpmcodec "
                              f"{RELEASES[old]} and re-encode")
        if old is not None:
            raise FormatError(f"unsupported .ddpm format version {old} (this build reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))})")
        raise FormatError("not a .ddpm file (bad format byte)")
    buf = io.BytesIO(data)
    header = Header.unpack_body(buf, model_id, tile)
    body_end = buf.tell()
    end_checked = header.end_checked()
    if end_checked and header.payload_bytes < 0:
        header.payload_bytes = len(data) - body_end
        if blocks.block_ends(header.payload_bytes):
            raise FormatError("corrupt file (trailing bytes after the payload)")
    elif end_checked and not blocks.block_ends(header.payload_bytes):
        raise FormatError("corrupt header (a short payload with its length stored)")
    check = b"" if end_checked else data[body_end: body_end + 2]
    if len(check) != (0 if end_checked else 2):
        raise FormatError("truncated header")
    if model_id is not None:
        if data[1] != model_id[0]:
            raise ModelMismatchError(f"file was encoded with a different model (tag {data[1]:02x}, this model's "
                                     f"{model_id[0]:02x}); pass the same --model used to encode")
        crc = _crc_header(model_id, data[:body_end])
    else:
        crc = None
    _validate(header)
    stored = data[body_end + len(check):]
    expected = blocks.stored_size(header.payload_bytes)
    if len(stored) > expected:
        raise FormatError("corrupt file (trailing bytes after the payload)")
    payload, verified, bad = blocks.split_stored(stored, header.payload_bytes, crc)
    if bad is not None:
        raise FormatError(f"corrupt file (check of payload block {bad + 1} failed), or encoded with a different "
                          "model")
    complete = len(stored) == expected
    if crc is not None:
        if complete and not end_checked and blocks.check16(zlib.crc32(stored, crc)) != check:
            raise FormatError("corrupt file (whole-file check failed), or encoded with a different model")
        if not complete and not verified:
            raise FormatError(f"truncated or damaged file: {len(data)} bytes hold no complete checked block of the "
                              f"{body_end + 2 + expected} the header announces, so nothing in it can be verified")
    usable = payload if complete or crc is None else payload[:verified]
    end_state = header.end_state() if end_checked and model_id is not None else None
    return Parsed(header, body_end + len(check), usable, complete, crc is not None, len(payload), end_state)


def version_for(exact_network: bool) -> int:
    """The format version an encoder writes: 8 for the U-Net on integer grids (--portable), else 7."""
    return EXACT_NETWORK_VERSION if exact_network else VERSION


def channel_settings_ok(version: int, budget_bits: int, margin_bits: int) -> bool:
    """Whether a chunk budget and margin are allowed in a file of this format version (the encoder's settings check
    and the decoder's header check)."""
    return (1 <= budget_bits <= MAX_BUDGET_BITS[version] and 0 <= margin_bits <= MAX_MARGIN_BITS
            and budget_bits + margin_bits <= MAX_CANDIDATE_BITS[version])


def _validate(h: Header) -> None:
    checks = [
        (h.width <= 1 << 16 and h.height <= 1 << 16, "implausible image size"),
        (channel_settings_ok(h.version, h.budget_bits, h.margin_bits), "channel settings out of range"),
        (1 <= h.n_steps <= 1 << 16 and 1 <= h.t_end < 1 << 16 and h.steps_present < 1 << 16, "implausible schedule"),
        (h.payload_bytes < 1 << 40 and h.seed < 1 << 32, "implausible sizes"),
        (not ((h.windowed or h.learned_x0) and h.mode == MODE_BITSBACK), "unknown flags"),
    ]
    for ok, msg in checks:
        if not ok:
            raise FormatError(f"corrupt header ({msg})")
