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
    assert container.unpack(container.pack(header(), bytes(12)), MID, 32).header_bytes == 7
    big = container.pack(header(payload_bytes=200), bytes(200))
    assert container.unpack(big, MID, 32).header_bytes == 8
    assert len(big) == 208  # no block check below 256 payload bytes


@given(w=st.integers(1, 5000), h=st.integers(1, 5000), present=st.integers(0, 300), lossless=st.booleans(),
       gray=st.booleans(), n_steps=st.integers(1, 1000), t_end=st.integers(1, 999), budget=st.integers(1, 15),
       margin=st.integers(0, 5), seed=st.integers(0, 2 ** 32 - 1),
       crc=st.integers(0, 0xFFFF), size=st.integers(0, 2000), mode=st.integers(0, 1))
@settings(max_examples=150, deadline=None)
def test_header_round_trip(w, h, present, lossless, gray, n_steps, t_end, budget, margin, seed, crc, size, mode):
    hd = header(width=w, height=h, steps_present=present, lossless=int(lossless), source_mode=int(gray),
                n_steps=n_steps, t_end=t_end, budget_bits=budget, margin_bits=margin, seed=seed,
                pixel_crc=crc if lossless else 0, payload_bytes=size, mode=mode)
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
    data = container.pack(header(), bytes(12))
    with pytest.raises(ModelMismatchError, match="different model"):
        container.unpack(data, b"\x09\x02\x03\x04", 32)
    with pytest.raises(FormatError, match="different model"):  # same tag, other identity: the file check fails
        container.unpack(data, b"\x01\x02\x03\x05", 32)


def test_legacy_and_future_versions_are_refused_clearly():
    with pytest.raises(FormatError, match="version-2 .ddpm file"):
        container.unpack(b"DDP\x02" + bytes(30), MID, 32)
    with pytest.raises(FormatError, match="version-3 .ddpm file .* ddpmcodec 0.2"):
        container.unpack(b"\xd3" + bytes(30), MID, 32)
    with pytest.raises(FormatError, match="version 7 .*reads versions 4, 5, 6"):
        container.unpack(b"\xd7" + bytes(30), MID, 32)
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


def test_trailing_bytes_refused():
    data = container.pack(header(payload_bytes=12), bytes(range(12)))
    with pytest.raises(FormatError, match="truncated"):  # too short to hold a checked block
        container.unpack(data[:-4], MID, 32)
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
