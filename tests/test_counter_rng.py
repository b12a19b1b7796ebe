"""Counter-based normals: known answers, counter property (any batch shape/order), statistics, table digest."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

from ddpmcodec.channel import counter_rng as cr
from ddpmcodec.errors import DeterminismError

# Random123 tests/kat_vectors (philox4x32 10): counter words, key words, output words.
PHILOX_KAT = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]
# Vigna's splitmix64.c: first five outputs for seeds 0 and 1234567.
SPLITMIX_KAT = {
    0: "e220a8397b1dcdaf 6e789e6aa1b965f4 06c45d188009454f f88bb8a8724c81ec 1b39896a51a8749b",
    1234567: "599ed017fb08fc85 2c73f08458540fa5 883ebce5a3f27c77 3fbef740e9177b3f e3b8346708cb5ecd",
}


def _words(text):
    return tuple(int(w, 16) for w in text.split())


@pytest.mark.parametrize("counter, key, expected", PHILOX_KAT)
def test_philox_known_answers(counter, key, expected):
    counter, key, expected = _words(counter), _words(key), _words(expected)
    assert cr.philox4x32_ref(counter, key) == expected
    batch = torch.tensor([counter, (1, 2, 3, 4), counter], dtype=torch.int64)
    for exact in (False, True):
        out = cr.philox4x32(batch, key, exact=exact)
        assert out.dtype == torch.int64 and tuple(out[0].tolist()) == expected == tuple(out[2].tolist())
        assert tuple(out[1].tolist()) == cr.philox4x32_ref((1, 2, 3, 4), key)


def test_philox_fast_equals_exact_and_reference():
    """The wrapping int64 multiply and the overflow-free one agree, including all-ones and top-bit words."""
    g = torch.Generator().manual_seed(0)
    counters = torch.randint(0, 2 ** 32, (2000, 4), generator=g, dtype=torch.int64)
    counters[:4] = torch.tensor([[0xFFFFFFFF] * 4, [0x80000000] * 4, [0, 0xFFFFFFFF, 0, 0xFFFFFFFF], [1, 0, 1, 0]])
    for key in [(0, 0), (0xFFFFFFFF, 0xFFFFFFFF), (0x12345678, 0x9ABCDEF0)]:
        fast = cr.philox4x32(counters, key)
        assert torch.equal(fast, cr.philox4x32(counters, key, exact=True))
        assert int(fast.min()) >= 0 and int(fast.max()) <= 0xFFFFFFFF
        for i in (0, 1, 2, 3, 1999):
            assert tuple(fast[i].tolist()) == cr.philox4x32_ref(counters[i].tolist(), key)
    one = torch.tensor([[5, 6, 7, 8]])
    cr.philox4x32(one, (1, 2))
    assert one.tolist() == [[5, 6, 7, 8]]  # the input is not modified (the rounds work in place on a copy)
    with pytest.raises(ValueError, match="uint32"):
        cr.philox4x32(torch.tensor([[2 ** 32, 0, 0, 0]]), (0, 0))


@pytest.mark.parametrize("seed", sorted(SPLITMIX_KAT))
def test_splitmix_known_answers(seed):
    expected = _words(SPLITMIX_KAT[seed])
    assert tuple(cr.splitmix64_ref(seed, i) for i in range(5)) == expected
    got = cr.splitmix64(seed, torch.tensor([4, 0, 1, 2, 3]))
    assert tuple(v & cr.MASK64 for v in got.tolist()) == expected[4:] + expected[:4]


def test_normal_table_digest_and_shape():
    table = cr.normal_table()
    assert table.dtype == torch.float32 and table.shape == (65536,)
    assert hashlib.sha256(table.numpy().astype("<f4").tobytes()).hexdigest() == cr.TABLE_SHA256
    assert torch.equal(table, -table.flip(0)) and bool((table[1:] > table[:-1]).all())  # antisymmetric, increasing
    t = table.double()
    assert float(t.mean()) == 0.0
    assert abs(float(t.max()) - 4.3249) < 1e-4  # Phi^-1(1 - 0.5 / 65536)
    assert abs(float((t * t).mean()) - 1) < 3e-5
    cr.check_device("cpu")


def test_table_digest_mismatch_is_loud(monkeypatch):
    monkeypatch.setattr(cr, "_TABLE_CPU", None)
    monkeypatch.setattr(cr, "TABLE_SHA256", "0" * 64)
    with pytest.raises(DeterminismError, match="different normal table"):
        cr.normal_table()


@pytest.mark.parametrize("method", cr.METHODS)
def test_counter_property_any_batching(method, monkeypatch):
    """Same value for the same index whatever the range, chunking or order it is generated in."""
    monkeypatch.setattr(cr, "CHUNK_CALLS", 9)  # many chunks, odd offsets
    whole = cr.normals(99, 0, 1000, stream=5, method=method)
    assert whole.dtype == torch.float32 and whole.shape == (1000,)
    for start, count in [(0, 1), (1, 7), (3, 250), (511, 489), (999, 1)]:
        assert torch.equal(cr.normals(99, start, count, stream=5, method=method), whole[start: start + count])
    monkeypatch.setattr(cr, "CHUNK_CALLS", 1 << 15)
    assert torch.equal(cr.normals(99, 0, 1000, stream=5, method=method), whole)
    # selected indices, any shape and order, repeated
    idx = torch.tensor([[999, 0, 8], [7, 7, 513]])
    assert torch.equal(cr.normals_at(99, idx, stream=5, method=method), whole[idx])
    perm = torch.randperm(1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(cr.normals_at(99, perm, stream=5, method=method), whole[perm])
    # far-away counters: a range near 2^40 equals pointwise regeneration
    far = cr.normals(99, 2 ** 40 - 5, 20, stream=5, method=method)
    assert torch.equal(far, cr.normals_at(99, torch.arange(2 ** 40 - 5, 2 ** 40 + 15), stream=5, method=method))
    # uniforms behind the normals
    u = cr.uniform16(99, 0, 1000, stream=5, method=method)
    assert torch.equal(cr.normal_table()[u], whole)
    assert cr.normals(99, 10, 0, method=method).shape == (0,)


def test_philox_uniform_layout():
    """Normal j of (key, stream) = 16-bit half (j % 2) of word (j % 8) // 2 of Philox(counter j // 8)."""
    key, stream = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    u = cr.uniform16(key, 0, 24, stream=stream).tolist()
    for block in range(3):
        words = cr.philox4x32_ref((block, 0, stream & cr.MASK32, stream >> 32), (key & cr.MASK32, key >> 32))
        assert u[8 * block: 8 * block + 8] == [h for w in words for h in (w & 0xFFFF, w >> 16)]
    seed = cr.stream_seed(7, 3)
    v = cr.uniform16(7, 0, 8, stream=3, method="splitmix").tolist()
    for call in range(2):
        z = cr.splitmix64_ref(seed, call)
        assert v[4 * call: 4 * call + 4] == [(z >> s) & 0xFFFF for s in (0, 16, 32, 48)]


@pytest.mark.parametrize("method", cr.METHODS)
def test_byte_order_independent_fields(method, monkeypatch):
    """The fast little-endian view and the arithmetic definition of the 16-bit fields agree."""
    fast = cr.normals(5, 3, 999, stream=2, method=method)
    monkeypatch.setattr(cr, "_LITTLE_ENDIAN", False)
    assert torch.equal(cr.normals(5, 3, 999, stream=2, method=method), fast)
    assert cr._u16_of_calls(method, 1, 2, torch.tensor([7, 9])).tolist() == cr._u16_ref(method, 1, 2, (7, 9))


@pytest.mark.parametrize("method", cr.METHODS)
def test_keys_and_streams_differ(method):
    base = cr.normals(1, 0, 4096, method=method)
    for other in (cr.normals(2, 0, 4096, method=method), cr.normals(1, 0, 4096, stream=1, method=method),
                  cr.normals(1, 4096, 4096, method=method)):
        assert float((base == other).float().mean()) < 0.01
        assert abs(float(np.corrcoef(base.numpy(), other.numpy())[0, 1])) < 0.06


@pytest.mark.parametrize("method", cr.METHODS)
def test_normal_statistics(method):
    """1e6 samples: moments within ~5 standard errors of N(0, 1) (the table's own moments are 0, 0.99998, 3-0.00075)."""
    z = cr.normals(2024, 0, 1_000_000, stream=11, method=method).double()
    n = z.numel()
    mean, var = float(z.mean()), float(z.var())
    kurt = float(((z - mean) ** 4).mean()) / var ** 2
    skew = float(((z - mean) ** 3).mean()) / var ** 1.5
    assert abs(mean) < 5 / n ** 0.5
    assert abs(var - 1) < 5 * (2 / n) ** 0.5
    assert abs(skew) < 5 * (6 / n) ** 0.5
    assert abs(kurt - 3) < 5 * (24 / n) ** 0.5
    # uniforms: every 16-bit value about equally often (chi-square over 256 bins of the high byte), low bits too
    u = cr.uniform16(2024, 0, 1_000_000, stream=11, method=method)
    for bins in (u >> 8, u & 0xFF):
        counts = torch.bincount(bins, minlength=256).double()
        chi2 = float(((counts - n / 256) ** 2 / (n / 256)).sum())
        assert chi2 < 255 + 6 * (2 * 255) ** 0.5
    # lag-1 correlation of consecutive normals (crosses word and call boundaries)
    assert abs(float(np.corrcoef(z[:-1].numpy(), z[1:].numpy())[0, 1])) < 5 / n ** 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        cr.normals(0, 0, 10, method="mt19937")
    with pytest.raises(ValueError, match="indices"):
        cr.normals(0, -1, 10)
    with pytest.raises(ValueError, match="indices"):
        cr.normals_at(0, torch.tensor([2 ** 62]))


def test_same_normals_on_the_test_device():
    """DDPMCODEC_TEST_DEVICE (eval.gpu_check sets it on a GPU machine; default cpu): known answers pass there and
    both generators give the CPU's values bit for bit."""
    device = os.environ.get("DDPMCODEC_TEST_DEVICE", "cpu")
    cr.check_device(device)
    for method in cr.METHODS:
        cpu = cr.normals(12345, 7, 5000, stream=3, method=method)
        assert torch.equal(cr.normals(12345, 7, 5000, stream=3, method=method, device=device).cpu(), cpu)
