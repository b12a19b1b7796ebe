"""The .ddpm header: exact round trips and a fuzz test (every malformed input raises FormatError, nothing else)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddpmcodec.container import header as container
from ddpmcodec.errors import CodecError, FormatError


def header(**kw) -> container.Header:
    base = dict(mode=0, model_id=b"\x01\x02\x03\x04", width=32, height=32, source_mode=0, tile=32,
                steps_present=5, lossless=0, prior_kind=1, pixel_crc=0, payload_bytes=12,
                **container.DEFAULTS)
    base.update(kw)
    return container.Header(**base)


def test_default_header_is_compact():
    data = container.pack(header(), bytes(12))
    assert len(data) - 12 <= 18


@given(w=st.integers(1, 5000), h=st.integers(1, 5000), present=st.integers(0, 300), lossless=st.booleans(),
       gray=st.booleans(), n_steps=st.integers(1, 1000), t_end=st.integers(1, 999), budget=st.integers(1, 15),
       margin=st.integers(0, 12), seed=st.integers(0, 2 ** 32 - 1),
       crc=st.integers(0, 0xFFFF), size=st.integers(0, 160))
@settings(max_examples=150, deadline=None)
def test_header_round_trip(w, h, present, lossless, gray, n_steps, t_end, budget, margin, seed, crc, size):
    hd = header(width=w, height=h, steps_present=present, lossless=int(lossless), source_mode=int(gray),
                n_steps=n_steps, t_end=t_end, budget_bits=budget, margin_bits=margin, seed=seed,
                pixel_crc=crc if lossless else 0, payload_bytes=size)
    payload = bytes(range(256))[:size]
    parsed = container.unpack(container.pack(hd, payload))
    assert parsed.header == hd and parsed.complete and parsed.payload == payload


def test_prefix_is_reported_incomplete_and_trailing_bytes_refused():
    data = container.pack(header(payload_bytes=12), bytes(range(12)))
    assert not container.unpack(data[:-4]).complete
    with pytest.raises(FormatError, match="trailing"):
        container.unpack(data + b"x")


@given(st.binary(max_size=64))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_random_bytes_never_crash(blob):
    for data in (blob, container.MAGIC + bytes([container.VERSION]) + blob):
        try:
            container.unpack(data)
        except FormatError:
            pass


@given(st.integers(0, 40), st.integers(0, 255))
@settings(max_examples=300, derandomize=True)  # a 16-bit check misses 1 in 65536 mutations
def test_mutated_files_raise_format_errors_only(pos, value):
    data = bytearray(container.pack(header(lossless=1, pixel_crc=77), bytes(range(12))))
    pos %= len(data)
    if data[pos] == value:
        return
    data[pos] = value
    try:
        container.unpack(bytes(data))
    except CodecError:
        return
    pytest.fail(f"mutation at byte {pos} went undetected")
