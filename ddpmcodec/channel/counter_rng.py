"""Counter-based, device-independent standard normals: the PFR candidates and arrival times since format 5.

Why: format 4's ``pfr.py`` drew its candidates from torch's CPU generator (MT19937 + torch's own normal sampler),
which is neither available on CUDA nor promised to stay the same across torch releases. A counter-based generator is a pure
function ``(key, stream, index) -> value``: any subset of values can be regenerated in any order or batch shape, on
any device, and the integers are defined by the algorithm alone.

Two bit generators, both written with torch int64 tensor ops:

* ``"philox"``: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
  the Random123 library). int64 tensors hold uint32 words; the 32x32 -> 64-bit product is formed in int64 and
  split with shifts and masks (lo = low 32 bits of p, hi = p >> 32; upper garbage bits are masked off before every
  multiply and at the end). Products above 2^63 wrap modulo 2^64, which every torch backend does (two's
  complement) but C++ leaves formally undefined: ``check_device`` verifies the known answers on each device at
  first use, and ``philox_lanes_exact`` is a variant whose intermediates never exceed 2^49 (32x16-bit partial
  products, about 2.5x slower), tested to agree. Passes the Random123 known-answer vectors. Counter
  (call lo, call hi, stream lo, stream hi); key (key lo, key hi).
  One call = 128 bits = 8 normals.
* ``"splitmix"``: SplitMix64 (Steele, Lea, Flood 2014; Vigna's ``splitmix64.c``) used counter-style: output ``i``
  of seed ``s`` is ``fmix(s + (i + 1) * 0x9E3779B97F4A7C15 mod 2^64)``, with ``s = stream_seed(key, stream)``.
  Fewer tensor ops per bit than Philox; it also relies on int64 multiplication wrapping modulo 2^64 (checked by
  ``check_device``). A strong 64-bit mixer (SplitMix64 passes BigCrush as a sequential generator), but not a
  Crush-resistant keyed function of (key, counter) the way Philox is: streams of different seeds are the same
  Weyl sequence at different offsets, so two streams overlap if their seeds differ by a small multiple of the
  gamma (probability ~ n_streams^2 * length / 2^64). One call = 64 bits = 4 normals.

Normals: every 16-bit uniform ``u`` (the little-endian 16-bit halves of the generator words, in order) maps to
``NORMAL_TABLE[u] = Phi^-1((u + 0.5) / 65536)`` rounded to float32. The table is built once on the CPU in float64
with Python's ``statistics.NormalDist.inv_cdf`` (Wichura's AS241, exact symmetry enforced) and checked against a
SHA-256 digest, so a platform whose libm would give a different table fails loudly instead of coding garbage.
The transform is then a pure gather: bit-identical on every device.

Trade-off (exactness vs quality vs speed): the output is a 65536-point quantile grid of N(0,1): spacing 3.8e-5
near 0, 0.019 at |z| = 3.5, and nothing beyond |z| = 4.325 (P(|Z| > 4.325) = 1.5e-5). Mean exactly 0, variance
0.99998, excess kurtosis -0.00075. Box-Muller (or an inverse CDF) in float64 on the device would give continuous
tails, but log/sqrt/cos are not correctly rounded and their last bits differ between CPU (SLEEF/glibc) and CUDA
(libdevice): after rounding to float32 an ulp-level float64 difference shows only when it straddles a float32
rounding boundary (roughly 1 value in 10^8-10^9), but at ~1e8 normals per image that is not negligible: a decoder
on another device would occasionally drift from the encoder (pfr tolerates drift in x, but the decoded-pixel
checksum can then fail). It is also slower on one CPU thread (philox-bm64 in eval/rng_bench.py). A finer grid
needs a larger table (2^24 entries = 64 MiB, out of cache; not implemented). Speeds: ``python -m eval.rng_bench``.

Use: ``normals(key, start, count, stream=..., method=...)`` for a contiguous range of indices and
``normals_at(key, index, stream=...)`` to regenerate any subset; both give the same bits for the same
(method, key, stream, index) on every device and for every chunking.
"""
from __future__ import annotations

import hashlib
import statistics
import sys

import numpy as np
import torch

from ddpmcodec.errors import DeterminismError

MASK16 = 0xFFFF
MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1

# ---- Philox4x32-10 ----------------------------------------------------------------------------------------------
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
PHILOX_ROUNDS = 10


def philox4x32_ref(counter, key, rounds: int = PHILOX_ROUNDS) -> tuple[int, int, int, int]:
    """Plain-Python Philox4x32-R of one counter (4 uint32 words) and key (2 words): the readable reference."""
    c0, c1, c2, c3 = (int(w) & MASK32 for w in counter)
    k0, k1 = (int(w) & MASK32 for w in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        p0, p1 = PHILOX_M0 * c0, PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def _mulhilo_exact(x: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of x * m for int64 x in [0, 2^32) and m < 2^32, no intermediate above 2^49.

    x * m = b * 2^16 + a with a = x * (m & 0xFFFF), b = x * (m >> 16), both < 2^48; with t = ((b & 0xFFFF) << 16) + a
    (< 2^49): lo = t & 0xFFFFFFFF and hi = (b >> 16) + (t >> 32).
    """
    a = x * (m & MASK16)
    b = x * (m >> 16)
    t = b & MASK16
    t <<= 16
    t += a
    lo = t & MASK32
    t >>= 32
    b >>= 16
    b += t
    return b, lo


def philox_lanes_exact(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS):
    """Philox rounds on four int64 lane tensors without any signed overflow (about 2.5x slower than philox_lanes).

    The reference the fast path is tested against; use it on a platform whose int64 multiply would not wrap.
    """
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo_exact(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo_exact(c2, PHILOX_M1)
        hi1 ^= c1
        hi1 ^= k0
        hi0 ^= c3
        hi0 ^= k1
        c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    return c0, c1, c2, c3


def philox_lanes(c0, c1, c2, c3, k0: int, k1: int, rounds: int = PHILOX_ROUNDS):
    """Philox rounds on four int64 lane tensors holding uint32 values; works in place (consumes the inputs).

    Returns four int64 tensors whose LOW 32 BITS are the output words (bits 32..63 are garbage: mask with
    0xFFFFFFFF). The 32x32-bit product is formed in int64, i.e. modulo 2^64 (two's complement wrap-around, what
    every torch backend does; verified at first use on each device by check_device). Only the low 32 bits of a
    lane ever matter except as a multiplier input, which is masked first; so per round and lane pair: mask, multiply
    in place (the product's low half is already the new lo word), one shift for hi, two XORs: 10 tensor ops per
    round, no allocation in the loop.
    """
    h0, h1 = torch.empty_like(c0), torch.empty_like(c0)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        c0 &= MASK32
        c0 *= PHILOX_M0  # p0: low 32 bits = lo0
        c2 &= MASK32
        c2 *= PHILOX_M1  # p1: low 32 bits = lo1
        torch.bitwise_right_shift(c0, 32, out=h0)  # hi0 in the low 32 bits
        torch.bitwise_right_shift(c2, 32, out=h1)  # hi1
        h1 ^= c1
        h1 ^= k0
        h0 ^= c3
        h0 ^= k1
        # new state (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the old c1, c3 buffers become scratch
        c0, c1, c2, c3, h0, h1 = h1, c2, h0, c0, c1, c3
    return c0, c1, c2, c3


def philox4x32(counter: torch.Tensor, key, rounds: int = PHILOX_ROUNDS, *, exact: bool = False) -> torch.Tensor:
    """Philox4x32-R of every row of ``counter`` ((N, 4) int64 holding uint32 words) under ``key`` (2 uint32 words).

    Returns (N, 4) int64 holding uint32 words on counter's device, the same integers on every device.
    exact: use the overflow-free multiply (slower; for checking).
    """
    counter = torch.as_tensor(counter)
    if counter.dtype != torch.int64 or counter.ndim != 2 or counter.shape[1] != 4:
        raise ValueError(f"counter must be an (N, 4) int64 tensor, got {counter.dtype} {tuple(counter.shape)}")
    if counter.numel() and (int(counter.min()) < 0 or int(counter.max()) > MASK32):
        raise ValueError("counter words must be uint32 values")
    lanes = torch.stack([counter[:, i] for i in range(4)]).unbind(0)  # a fresh copy: the rounds work in place
    fn = philox_lanes_exact if exact else philox_lanes
    return torch.stack(fn(*lanes, int(key[0]) & MASK32, int(key[1]) & MASK32, rounds), dim=1) & MASK32


# ---- SplitMix64 -------------------------------------------------------------------------------------------------
SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
SPLITMIX_C1, SPLITMIX_C2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _s64(v: int) -> int:
    """uint64 -> the int64 with the same bits."""
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def fmix64_ref(z: int) -> int:
    """SplitMix64's output function (Stafford's Mix13) on one uint64, in plain Python."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * SPLITMIX_C1) & MASK64
    z = ((z ^ (z >> 27)) * SPLITMIX_C2) & MASK64
    return z ^ (z >> 31)


def splitmix64_ref(seed: int, index: int) -> int:
    """Output ``index`` (0-based) of Vigna's splitmix64 seeded with ``seed``, in plain Python."""
    return fmix64_ref(seed + (index + 1) * SPLITMIX_GAMMA)


def _fmix64_(z: torch.Tensor) -> torch.Tensor:
    """In place: SplitMix64 output function on int64 tensors (bits of uint64; logical shifts done with masks)."""
    t = z >> 30
    t &= (1 << 34) - 1
    z ^= t
    z *= _s64(SPLITMIX_C1)
    torch.bitwise_right_shift(z, 27, out=t)
    t &= (1 << 37) - 1
    z ^= t
    z *= _s64(SPLITMIX_C2)
    torch.bitwise_right_shift(z, 31, out=t)
    t &= (1 << 33) - 1
    z ^= t
    return z


def splitmix64(seed: int | torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """SplitMix64 outputs at ``index`` (int64 tensor, any shape, values >= 0) -> int64 tensor holding uint64 bits.
    seed: one seed, or an int64 tensor of seeds (uint64 bits) broadcast against index (one stream per seed)."""
    index = torch.as_tensor(index)
    z = index + 1
    z *= _s64(SPLITMIX_GAMMA)
    z = z + seed if torch.is_tensor(seed) else z.add_(_s64(seed))
    return _fmix64_(z)


def splitmix_normals(seeds: torch.Tensor, calls: torch.Tensor) -> torch.Tensor:
    """Normals of SplitMix64 calls: seeds (int64 tensor) broadcast against calls (..., d4) -> (..., 4 d4) float32.
    Call b of the stream with seed s gives four 16-bit uniforms, least significant first, through the table."""
    bits = splitmix64(seeds, calls)
    return torch.index_select(normal_table(bits.device), 0, _fields16(bits.reshape(-1))).reshape(*bits.shape[:-1], -1)


def stream_seed(key: int, stream: int = 0) -> int:
    """SplitMix64 seed of (key, stream): two rounds of fmix64, so nearby keys/streams get unrelated sequences."""
    return fmix64_ref(fmix64_ref((int(key) & MASK64) ^ SPLITMIX_GAMMA) ^ (int(stream) & MASK64))


# ---- the normal table -------------------------------------------------------------------------------------------
TABLE_BITS = 16
TABLE_SIZE = 1 << TABLE_BITS
# sha256 of NORMAL_TABLE as little-endian float32 bytes; see normal_table().
TABLE_SHA256 = "1cfbba1e07e34386a57626f82aeb43e6ed54ba70a3ea6b7d964dc66a841074a8"
_TABLE_CPU: torch.Tensor | None = None
_TABLES: dict = {}


def build_normal_table() -> np.ndarray:
    """Phi^-1((i + 0.5) / 65536) for i in 0..65535 as float32 (float64 AS241, then one rounding; antisymmetric)."""
    inv = statistics.NormalDist().inv_cdf
    half = TABLE_SIZE // 2
    upper = np.array([inv((i + 0.5) / TABLE_SIZE) for i in range(half, TABLE_SIZE)], dtype=np.float64)
    upper32 = upper.astype(np.float32)
    return np.concatenate([-upper32[::-1], upper32])


def normal_table(device: str | torch.device = "cpu") -> torch.Tensor:
    """The (65536,) float32 quantile table on ``device`` (built and digest-checked once, then cached)."""
    global _TABLE_CPU
    if _TABLE_CPU is None:
        table = build_normal_table()
        digest = hashlib.sha256(table.astype("<f4").tobytes()).hexdigest()
        if digest != TABLE_SHA256:
            raise DeterminismError(f"this platform builds a different normal table (sha256 {digest[:16]}...); "
                                   "counter-based normals would not match other machines")
        _TABLE_CPU = torch.from_numpy(table)
    device = torch.device(device)
    if device.type == "cpu":
        return _TABLE_CPU
    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = _TABLE_CPU.to(device)
    return _TABLES[key]


# ---- device check -----------------------------------------------------------------------------------------------
_PHILOX_KAT = (  # Random123 tests/kat_vectors, philox4x32 10: counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)
_SPLITMIX_KAT = ((1234567, (0x599ED017FB08FC85, 0x2C73F08458540FA5, 0x883EBCE5A3F27C77, 0x3FBEF740E9177B3F,
                            0xE3B8346708CB5ECD)),)  # Vigna's splitmix64.c, seed 1234567, first five outputs
_CHECKED: set = set()


def check_device(device: str | torch.device = "cpu") -> None:
    """Known answers of both generators and the table digest on ``device`` (once per device); DeterminismError if
    this torch build / device computes different integers (e.g. an int64 multiply that does not wrap)."""
    device = torch.device(device)
    if str(device) in _CHECKED:
        return
    normal_table(device)
    for counter, key, expected in _PHILOX_KAT:
        got = philox4x32(torch.tensor([counter], dtype=torch.int64, device=device), key)[0].tolist()
        if tuple(got) != expected:
            raise DeterminismError(f"Philox4x32-10 known answer failed on {device} (torch {torch.__version__})")
    for seed, expected in _SPLITMIX_KAT:
        got = splitmix64(seed, torch.arange(len(expected), device=device)).tolist()
        if tuple(v & MASK64 for v in got) != expected:
            raise DeterminismError(f"SplitMix64 known answer failed on {device} (torch {torch.__version__})")
    for method in METHODS:  # the 16-bit fields: against the plain-Python definition
        got = _u16_of_calls(method, 0x0123456789ABCDEF, 0xFEDCBA9876543210,
                            torch.tensor([0, 2 ** 40 + 3], device=device)).tolist()
        if got != _u16_ref(method, 0x0123456789ABCDEF, 0xFEDCBA9876543210, (0, 2 ** 40 + 3)):
            raise DeterminismError(f"{method} uniforms differ from the reference on {device}")
    _CHECKED.add(str(device))


def _u16_ref(method: str, key: int, stream: int, calls) -> list[int]:
    """Plain-Python uniforms of the given generator calls (the definition _u16_of_calls implements)."""
    out = []
    for b in calls:
        if method == "philox":
            words = philox4x32_ref((b & MASK32, b >> 32, stream & MASK32, (stream >> 32) & MASK32),
                                   (key & MASK32, (key >> 32) & MASK32))
            out += [h for w in words for h in (w & MASK16, w >> 16)]
        else:
            z = splitmix64_ref(stream_seed(key, stream), b)
            out += [(z >> s) & MASK16 for s in (0, 16, 32, 48)]
    return out


# ---- generator words -> 16-bit uniforms -> normals ------------------------------------------------------------
_LITTLE_ENDIAN = sys.byteorder == "little"  # torch tensors use the host byte order (CUDA devices: little-endian)
METHODS = ("philox", "splitmix")
PER_CALL = {"philox": 8, "splitmix": 4}  # 16-bit uniforms (normals) per generator call
CHUNK_CALLS = 1 << 15  # generator calls per pass (2^18 Philox / 2^17 SplitMix normals): best measured on one
# CPU thread of a loaded 2-core box (2^14..2^17 calls within ~20%; larger ones fall out of cache)


def _method(method: str) -> int:
    if method not in PER_CALL:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return PER_CALL[method]


def _u16_of_calls(method: str, key: int, stream: int, calls: torch.Tensor) -> torch.Tensor:
    """(B,) int64 generator-call indices -> (B * PER_CALL,) int64 uniforms in [0, 65536).

    Philox call b: counter (b lo, b hi, stream lo, stream hi), key (key lo, key hi); its words w0..w3 give
    uniforms w0 & 0xFFFF, w0 >> 16, w1 & 0xFFFF, ..., w3 >> 16. SplitMix call b: output b of the seed
    stream_seed(key, stream); its 64 bits give four uniforms, least significant 16 bits first.
    """
    if method == "philox":
        c0 = calls & MASK32
        c1 = calls >> 32
        c2 = torch.full_like(calls, int(stream) & MASK32)
        c3 = torch.full_like(calls, (int(stream) >> 32) & MASK32)
        w0, w1, w2, w3 = philox_lanes(c0, c1, c2, c3, int(key) & MASK32, (int(key) >> 32) & MASK32)
        # pack (w0, w1) and (w2, w3) into 64-bit words, low word first: then the four 16-bit fields of each, least
        # significant first, are exactly the uniforms in order
        w1 <<= 32
        w0 &= MASK32
        w1 |= w0
        w3 <<= 32
        w2 &= MASK32
        w3 |= w2
        return _fields16(torch.stack([w1, w3], dim=-1).reshape(-1))
    return _fields16(splitmix64(stream_seed(key, stream), calls))


def _fields16(z: torch.Tensor) -> torch.Tensor:
    """(N,) int64 -> (4N,) int64: the four 16-bit fields of each value, least significant first."""
    if _LITTLE_ENDIAN:  # the bytes in memory are already in that order: a free view, then one widening copy
        return z.contiguous().view(torch.uint16).to(torch.int64)
    return torch.stack([z & MASK16, (z >> 16) & MASK16, (z >> 32) & MASK16, (z >> 48) & MASK16], dim=-1).reshape(-1)


def _check_range(start: int, count: int) -> None:
    if start < 0 or count < 0 or start + count > (1 << 62):
        raise ValueError(f"indices must lie in [0, 2^62): start={start}, count={count}")


def _ranges(method: str, start: int, count: int):
    """(first call, end call, offset of `start` in the first call's uniforms, uniforms wanted) per chunk."""
    per = _method(method)
    calls_per_chunk = max(1, CHUNK_CALLS)
    pos, first, end = 0, start // per, (start + count - 1) // per + 1
    for b0 in range(first, end, calls_per_chunk):
        b1 = min(b0 + calls_per_chunk, end)
        lo = start - b0 * per if b0 == first else 0
        n = min((b1 - b0) * per - lo, count - pos)
        yield b0, b1, lo, pos, n
        pos += n


def uniform16(key: int, start: int, count: int, *, stream: int = 0, method: str = "philox",
              device: str | torch.device = "cpu") -> torch.Tensor:
    """The 16-bit uniforms (int64 in [0, 65536)) behind ``normals``: value j is the input of normal j."""
    start, count = int(start), int(count)
    _check_range(start, count)
    check_device(device)
    out = torch.empty(count, dtype=torch.int64, device=device)
    for b0, b1, lo, pos, n in (_ranges(method, start, count) if count else ()):
        u = _u16_of_calls(method, key, stream, torch.arange(b0, b1, dtype=torch.int64, device=device))
        out[pos: pos + n] = u[lo: lo + n]
    return out


def normals(key: int, start: int, count: int, *, stream: int = 0, method: str = "philox",
            device: str | torch.device = "cpu") -> torch.Tensor:
    """Standard normals with indices start .. start+count-1 of (key, stream) -> (count,) float32 on ``device``.

    key, stream: 64-bit integers (e.g. a seed hash and a step/segment number). Normal ``j`` is
    ``NORMAL_TABLE[u_j]`` with u_j the j-th 16-bit uniform of (method, key, stream) (see ``_u16_of_calls``): it
    depends on nothing else, so ``normals(k, s, n)[i] == normals_at(k, s + i)`` bit for bit, on every device.
    """
    start, count = int(start), int(count)
    _check_range(start, count)
    check_device(device)
    table = normal_table(device)
    out = torch.empty(count, dtype=torch.float32, device=device)
    for b0, b1, lo, pos, n in (_ranges(method, start, count) if count else ()):
        u = _u16_of_calls(method, key, stream, torch.arange(b0, b1, dtype=torch.int64, device=device))
        torch.index_select(table, 0, u[lo: lo + n], out=out[pos: pos + n])
    return out


def normals_at(key: int, index, *, stream: int = 0, method: str = "philox") -> torch.Tensor:
    """Standard normals at arbitrary indices (int64 tensor, any shape, values in [0, 2^62)) -> float32, same shape.

    Each index costs one generator call; use ``normals`` for contiguous ranges.
    """
    per = _method(method)
    index = torch.as_tensor(index, dtype=torch.int64)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= (1 << 62)):
        raise ValueError("indices must lie in [0, 2^62)")
    check_device(index.device)
    flat = index.reshape(-1)
    u = _u16_of_calls(method, key, stream, flat // per).reshape(-1, per)
    u = u.gather(1, (flat % per).unsqueeze(1)).reshape(-1)
    return torch.index_select(normal_table(index.device), 0, u).reshape(index.shape)
