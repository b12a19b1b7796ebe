"""The .ddpm container (v3): exact round trips, compactness, block checks for partial files, and fuzzing (every
malformed input raises a CodecError, nothing else, and a partial file only ever yields verified payload bytes)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpmcodec.container import blocks
from ddpmcodec.container import header as container
from ddpmcodec.container.limits import DecodeLimits
from ddpmcodec.errors import CodecError, FormatError, ModelMismatchError

MID = b"\x01\x02\x03\x04"


def header(**kw) -> container.Header:
    base = dict(mode=0, model_id=MID, width=32, height=32, source_mode=0, tile=32,
                steps_present=5, lossless=0, prior_kind=1, pixel_crc=0, payload_bytes=12,
                **container.DEFAULTS)
    base.update(kw)
    return container.Header(**base)


def test_default_lossy_header_is_at_most_10_bytes():
    small = container.pack(header(), bytes(12))  # version 7: no length, no file check (the end state holds it)
    assert container.unpack(small, MID, 32).header_bytes == 4 and len(small) == 16
    big = container.pack(header(payload_bytes=200), bytes(200))
    assert container.unpack(big, MID, 32).header_bytes == 4 and len(big) == 204  # no block check up to 256 bytes
    longer = container.pack(header(payload_bytes=300), bytes(300))  # length stored, one block check
    assert container.unpack(longer, MID, 32).header_bytes == 6 and len(longer) == 308
    v6 = container.pack(header(version=6), bytes(12))
    assert container.unpack(v6, MID, 32).header_bytes == 7
    assert container.unpack(container.pack(header(version=6, payload_bytes=200), bytes(200)), MID, 32).header_bytes == 8


@pytest.mark.parametrize("size", [0, 3, 255, 256, 257, 300, 5000])
def test_end_checked_lengths_round_trip_implicit_up_to_one_block(size):
    hd = header(payload_bytes=size)
    payload = bytes(i * 7 % 251 for i in range(size))
    data = container.pack(hd, payload)
    parsed = container.unpack(data, MID, 32)
    assert parsed.header == hd and parsed.complete and parsed.payload == payload
    assert hd.implicit_length() == (size <= blocks.FIRST_BLOCK)
    assert parsed.end_state == hd.end_state() and container.END_STATE_BASE <= parsed.end_state < 2 ** 17
    assert container.unpack(data).end_state is None  # nothing to check against without the model


def test_end_state_covers_identity_and_header_but_not_the_length():
    base = header()
    assert base.end_state() == header(payload_bytes=999).end_state()  # the length depends on it, so it stays out
    others = [header(model_id=b"\x01\x02\x03\x05"), header(steps_present=6), header(source_mode=1), header(seed=1),
              header(n_steps=8, t_end=container.STOP_GRID[40]), header(width=40)]
    assert len({base.end_state()} | {h.end_state() for h in others}) == len(others) + 1
    assert header(lossless=1).end_state() is None and header(version=6).end_state() is None
    assert header(mode=1).end_state() is None


def test_crafted_end_checked_lengths_are_refused():
    data = container.pack(header(payload_bytes=300), bytes(300))
    hb = container.unpack(data, MID, 32).header_bytes
    implicit = bytearray(data)
    implicit[3] |= 1  # claim an implicit length: the stored length and 300 bytes then make a payload over one block
    with pytest.raises(FormatError, match="trailing"):
        container.unpack(bytes(implicit), MID, 32)
    short = container.pack(header(version=6, payload_bytes=12), bytes(12))
    body = bytes([0xD7]) + short[1:3] + bytes([5 << 1, 12])  # explicit form for a 12-byte payload
    with pytest.raises(FormatError, match="short payload with its length stored"):
        container.unpack(body + bytes(12), MID, 32)
    assert hb == 6


@given(w=st.integers(1, 5000), h=st.integers(1, 5000), present=st.integers(0, 300), lossless=st.booleans(),
       gray=st.booleans(), n_steps=st.integers(1, 1000), t_end=st.integers(1, 999), budget=st.integers(1, 15),
       margin=st.integers(0, 5), seed=st.integers(0, 2 ** 32 - 1),
       crc=st.integers(0, 0xFFFF), size=st.integers(0, 2000), mode=st.integers(0, 1))
@settings(max_examples=150, deadline=None)
def test_header_round_trip(w, h, present, lossless, gray, n_steps, t_end, budget, margin, seed, crc, size, mode):
    hd = header(width=w, height=h, steps_present=present, lossless=int(lossless or mode), source_mode=int(gray),
                n_steps=n_steps, t_end=t_end, budget_bits=budget, margin_bits=margin, seed=seed,
                pixel_crc=crc if lossless or mode else 0, payload_bytes=size, mode=mode)
    payload = bytes(i * 7 % 251 for i in range(size))
    data = container.pack(hd, payload)
    parsed = container.unpack(data, MID, 32)
    assert parsed.header == hd and parsed.complete and parsed.verified and parsed.payload == payload
    assert len(data) == parsed.header_bytes + blocks.stored_size(size)


def test_one_tile_images_store_no_size_and_need_the_tile_to_resolve_it():
    data = container.pack(header(), bytes(12))
    assert container.unpack(data, MID, 32).header.width == 32
    assert container.unpack(data).header.width == 0  # read without the model: one tile of unknown size
    assert not container.unpack(data).verified


def test_wrong_model_is_refused_by_tag_or_by_the_checks():
    for version in (6, 7):
        data = container.pack(header(version=version), bytes(12))
        with pytest.raises(ModelMismatchError, match="different model"):
            container.unpack(data, b"\x09\x02\x03\x04", 32)
    data = container.pack(header(version=6), bytes(12))
    with pytest.raises(FormatError, match="different model"):  # same tag, other identity: the file check fails
        container.unpack(data, b"\x01\x02\x03\x05", 32)
    data = container.pack(header(), bytes(12))  # version 7, lossy: the other identity gives another end state
    assert container.unpack(data, b"\x01\x02\x03\x05", 32).end_state != container.unpack(data, MID, 32).end_state


def test_legacy_and_future_versions_are_refused_clearly():
    with pytest.raises(FormatError, match="version-2 .ddpm file"):
        container.unpack(b"DDP\x02" + bytes(30), MID, 32)
    with pytest.raises(FormatError, match="version-3 .ddpm file .* ddpmcodec 0.2"):
        container.unpack(b"\xd3" + bytes(30), MID, 32)
    with pytest.raises(FormatError, match="version 9 .*reads versions 4, 5, 6, 7, 8"):
        container.unpack(b"\xd9" + bytes(30), MID, 32)
    with pytest.raises(FormatError, match="not a .ddpm file"):
        container.unpack(b"GIF89a" + bytes(30), MID, 32)


def test_block_layout():
    assert blocks.block_ends(256) == [] and blocks.block_ends(257) == [256]
    assert blocks.block_ends(1700) == [256, 768]
    ends = blocks.block_ends(10 ** 6)
    assert all(b - a <= blocks.MAX_BLOCK for a, b in zip(ends, ends[1:]))
    assert blocks.stored_prefix_for(1, 1700) == 258 and blocks.stored_prefix_for(257, 1700) == 772
    assert blocks.stored_prefix_for(769, 1700) == blocks.stored_size(1700)


def test_partial_file_keeps_exactly_its_verified_blocks():
    payload = bytes(i % 251 for i in range(3000))
    data = container.pack(header(payload_bytes=3000), payload)
    hb = container.unpack(data, MID, 32).header_bytes
    for cut in range(0, len(data), 37):
        verified = [e for k, e in enumerate(blocks.block_ends(3000)) if e + 2 * (k + 1) <= cut - hb]
        if not verified:  # nothing checkable: refused, never decoded from the unverified header alone
            with pytest.raises(FormatError, match="truncated|not a .ddpm"):
                container.unpack(data[:cut], MID, 32)
            continue
        parsed = container.unpack(data[:cut], MID, 32)
        assert not parsed.complete
        assert parsed.payload == payload[:verified[-1]]


def test_damage_inside_a_partial_file_is_refused():
    payload = bytes(i % 251 for i in range(3000))
    data = bytearray(container.pack(header(payload_bytes=3000), payload))
    hb = container.unpack(bytes(data), MID, 32).header_bytes
    cut = hb + 1000  # holds blocks 1 and 2 (checked) and part of block 3
    del data[hb + 52: hb + 55]  # deleting bytes inside block 1 shifts everything after it
    with pytest.raises(FormatError, match="block 1"):
        container.unpack(bytes(data[:cut]), MID, 32)


@pytest.mark.parametrize("kw", [dict(version=6, payload_bytes=12), dict(payload_bytes=300)])
def test_trailing_bytes_refused(kw):
    data = container.pack(header(**kw), bytes(range(12)) * (kw["payload_bytes"] // 12))
    hb = container.unpack(data, MID, 32).header_bytes
    with pytest.raises(FormatError, match="truncated"):  # too short to hold a checked block
        container.unpack(data[:hb + 10], MID, 32)
    with pytest.raises(FormatError, match="trailing"):
        container.unpack(data + b"x", MID, 32)


@pytest.mark.parametrize("field,value,match", [
    ("budget_bits", 15, "channel settings"), ("n_steps", 1 << 17, "schedule"), ("t_end", 1 << 17, "schedule")])
def test_absurd_fields_are_refused(field, value, match):
    kw = {field: value}
    if field == "budget_bits":
        kw["margin_bits"] = 12
    data = container.pack(header(**kw), bytes(12))
    with pytest.raises(FormatError, match=match):
        container.unpack(data, MID, 32)


def test_limits():
    DecodeLimits().check_pixels(4096 * 4096, "x")
    with pytest.raises(FormatError, match="--max-pixels"):
        DecodeLimits().check_pixels(8192 * 8192, "x")
    DecodeLimits.raised(1 << 30).check_pixels(8192 * 8192, "x")
    with pytest.raises(FormatError, match="network evaluations"):
        DecodeLimits().check_work(65536, 153)
    DecodeLimits.raised(1 << 30).check_work(65536, 153)


@given(st.binary(max_size=64))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_crash(blob):
    for data in (blob, bytes([container.FORMAT_BYTE, MID[0]]) + blob):
        for args in ((), (MID, 32)):
            try:
                container.unpack(data, *args)
            except CodecError:
                pass


@given(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from(["flip", "delete", "insert"]))
@settings(max_examples=400, derandomize=True, deadline=None)  # a 16-bit check misses 1 in 65536 mutations
def test_mutated_files_raise_or_yield_only_verified_bytes(pos, value, op):
    payload = bytes(i * 13 % 256 for i in range(1500))
    data = bytearray(container.pack(header(lossless=1, pixel_crc=77, payload_bytes=1500), payload))
    pos %= len(data)
    if op == "flip":
        if data[pos] == value:
            return
        data[pos] = value
    elif op == "delete":
        del data[pos]
    else:
        data.insert(pos, value)
    try:
        parsed = container.unpack(bytes(data), MID, 32)
    except CodecError:
        return
    assert not parsed.complete, f"{op} at byte {pos} went undetected"
    assert payload.startswith(parsed.payload), f"{op} at byte {pos} yielded unverified bytes"
