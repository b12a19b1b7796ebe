"""Chunked channel simulation with the Poisson functional representation (Li & El Gamal 2018).

One coded step sends a sample of q = N(mu_q, var_q I) to a receiver that knows only p = N(mu_p, var_p I).
The dimensions (a flat vector of D coded values) are split by a seeded permutation into ``n_chunks`` chunks of
near-equal size. For each chunk both sides can generate the same candidates z_i ~ N(0, I) from a shared seed; the
sender picks K = argmin_i [log T_i - log q(x_i)/p(x_i)] over the first ``n_candidates`` (T_i: Poisson arrival
times known only to the sender) and sends K. The receiver rebuilds x = mu_p + sigma_p z_K.

Candidates for (step, segment of chunks, block of 64 candidates) come from one torch CPU generator seeded by a hash,
so the receiver regenerates only the blocks it needs. Indices do not depend on network outputs: float drift between
sender and receiver changes x slightly (graceful), never the parse of the stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpmcodec.errors import DeterminismError
from ddpmcodec.parallel import map_one_thread_each

MASK64 = (1 << 64) - 1
BLOCK = 64  # candidates generated per generator call
SEGMENT_DIMS = 4096  # chunks are grouped into segments of about this many dimensions per generator call


def mix_seed(*values: int) -> int:
    """SplitMix64-style hash of integers -> 63-bit seed (platform independent)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & MASK64)) & MASK64
        h = (h + 0x9E3779B97F4A7C15) & MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


# The candidate generator is part of the file format: a torch release that changed its CPU normal sampler would
# silently decode garbage, so every encode/decode first checks known answers (tolerant to last-ulp differences).
_KNOWN_POSITIONS = (0, 1, 2, 3, 500, 1087)
_KNOWN_VALUES = (-0.163784, -0.226309, -0.795434, -2.067277, -1.022233, 0.217415)


def check_candidate_generator() -> None:
    z = torch.randn(BLOCK, 17, generator=_gen(mix_seed(1, 2, 3))).flatten()
    got = z[list(_KNOWN_POSITIONS)].double()
    if not torch.allclose(got, torch.tensor(_KNOWN_VALUES, dtype=torch.float64), rtol=0, atol=1e-4):
        raise DeterminismError(
            f"this torch build ({torch.__version__}) generates different candidate noise than the codec expects; "
            "files cannot be coded reliably with it (use torch==2.13.0)")


@dataclass(frozen=True)
class ChunkLayout:
    """Rectangular (n_chunks, d_max) view of D coded dimensions after a seeded permutation.

    index[c, j] is the coded-dimension index of slot j of chunk c, or -1 for padding.
    """

    index: torch.Tensor  # (n_chunks, d_max) int64
    mask: torch.Tensor  # (n_chunks, d_max) bool
    chunks_per_segment: int

    @property
    def n_chunks(self) -> int:
        return self.index.shape[0]

    @classmethod
    def make(cls, n_dims: int, n_chunks: int, seed: int) -> "ChunkLayout":
        n_chunks = max(1, min(n_chunks, n_dims))
        perm = torch.randperm(n_dims, generator=_gen(seed))
        sizes = torch.full((n_chunks,), n_dims // n_chunks, dtype=torch.long)
        sizes[: n_dims % n_chunks] += 1
        d_max = int(sizes[0])
        starts = torch.cumsum(sizes, 0) - sizes
        slot = torch.arange(d_max)
        mask = slot[None, :] < sizes[:, None]
        pos = (starts[:, None] + slot[None, :]).clamp(max=n_dims - 1)
        index = torch.where(mask, perm[pos], torch.full_like(pos, -1))
        return cls(index=index, mask=mask, chunks_per_segment=max(1, SEGMENT_DIMS // d_max))

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """(D,) -> (n_chunks, d_max) with zeros in padding."""
        return torch.where(self.mask, v[self.index.clamp(min=0)], torch.zeros((), dtype=v.dtype))

    def scatter(self, values: torch.Tensor, n_dims: int) -> torch.Tensor:
        """(n_chunks, d_max) -> (D,)."""
        out = torch.empty(n_dims, dtype=values.dtype)
        out[self.index[self.mask]] = values[self.mask]
        return out


def _segment_candidates(step_seed: int, layout: ChunkLayout, segment: int, block: int) -> torch.Tensor:
    """Candidates of one (segment, block): (BLOCK, chunks in segment, d_max) float32 standard normals."""
    cps = layout.chunks_per_segment
    n_in_seg = min(cps, layout.n_chunks - segment * cps)
    d_max = layout.index.shape[1]
    return torch.randn(BLOCK, n_in_seg, d_max, generator=_gen(mix_seed(step_seed, 1, segment, block)))


def _segments_candidates(step_seed: int, layout: ChunkLayout, segments: range, block: int) -> torch.Tensor:
    """Candidates of one block for the chunks of `segments`: (BLOCK, their chunks, d_max)."""
    return torch.cat([_segment_candidates(step_seed, layout, g, block) for g in segments], dim=1)


def pfr_select(step_seed: int, layout: ChunkLayout, delta: torch.Tensor, ratio: float, n_candidates: int,
               workers: int = 1) -> torch.Tensor:
    """Sender side: PFR index per chunk, int64 (n_chunks,).

    delta: (D,) float32, (mu_p - mu_q) / sigma_q per coded dimension; ratio = sigma_p / sigma_q (>= 1 here).
    log q/p at x = mu_p + sigma_p z equals sum_j [(1 - r^2)/2 z_j^2 - r delta_j z_j] + const, so only that score
    matters. Stops early once no later candidate can win (arrival times only grow; the score is bounded).
    Segments are independent, so with workers > 1 contiguous runs of segments are searched on parallel threads;
    the indices are the same for any worker count.
    """
    n_seg = math.ceil(layout.n_chunks / layout.chunks_per_segment)
    workers = max(1, min(workers, n_seg))
    bounds = [round(i * n_seg / workers) for i in range(workers + 1)]
    runs = [range(bounds[i], bounds[i + 1]) for i in range(workers)]
    dl = layout.gather(delta.float())  # (n_chunks, d_max)
    if workers == 1:
        return _pfr_select_segments(step_seed, layout, dl, float(ratio), n_candidates, runs[0])
    parts = map_one_thread_each(lambda run: _pfr_select_segments(step_seed, layout, dl, float(ratio), n_candidates,
                                                                 run), runs, workers)
    return torch.cat(parts)


def _pfr_select_segments(step_seed: int, layout: ChunkLayout, dl: torch.Tensor, r: float, n_candidates: int,
                         segments: range) -> torch.Tensor:
    """pfr_select for the chunks of `segments` (a contiguous run): their indices, int64."""
    cps = layout.chunks_per_segment
    lo, hi = segments.start * cps, min(layout.n_chunks, segments.stop * cps)
    a = 0.5 * (1.0 - r * r)
    dl = dl[lo:hi]
    maskf = layout.mask[lo:hi].float()
    n_chunks = hi - lo
    if r > 1.0 + 1e-9:
        upper = (r * r * dl.double() ** 2).sum(1) / (2.0 * (r * r - 1.0))
    else:
        upper = torch.full((n_chunks,), math.inf, dtype=torch.float64)
    best = torch.full((n_chunks,), math.inf, dtype=torch.float64)
    best_idx = torch.zeros(n_chunks, dtype=torch.long)
    arrivals = torch.zeros(n_chunks, dtype=torch.float64)
    arrival_gen = _gen(mix_seed(step_seed, 2))  # one stream for all chunks; each run takes its columns
    n_blocks = math.ceil(n_candidates / BLOCK)
    for b in range(n_blocks):
        z = _segments_candidates(step_seed, layout, segments, b)  # (BLOCK, n_chunks, d_max)
        score = a * (z * z * maskf).sum(-1) - r * (z * dl).sum(-1)  # (BLOCK, n_chunks)
        exp = torch.empty(BLOCK, layout.n_chunks, dtype=torch.float64).exponential_(generator=arrival_gen)[:, lo:hi]
        times = arrivals + torch.cumsum(exp, 0)
        arrivals = times[-1]
        val = torch.log(times) - score.double()
        valid = min(BLOCK, n_candidates - b * BLOCK)
        val = val[:valid]
        vmin, arg = val.min(0)
        better = vmin < best
        best = torch.where(better, vmin, best)
        best_idx = torch.where(better, arg + b * BLOCK, best_idx)
        if bool((torch.log(arrivals) - upper >= best).all()):
            break
    return best_idx


def pfr_reconstruct(step_seed: int, layout: ChunkLayout, indices: torch.Tensor) -> torch.Tensor:
    """Both sides: the chosen standard-normal candidates, (n_chunks, d_max) float32 (zeros in padding)."""
    cps = layout.chunks_per_segment
    out = torch.zeros(layout.index.shape, dtype=torch.float32)
    chunk_ids = torch.arange(layout.n_chunks)
    segments = chunk_ids // cps
    blocks = indices // BLOCK
    pairs = torch.unique(segments * (1 << 32) + blocks)
    for key in pairs.tolist():
        g, b = key >> 32, key & ((1 << 32) - 1)
        z = _segment_candidates(step_seed, layout, g, b)
        sel = (segments == g) & (blocks == b)
        cs = chunk_ids[sel]
        out[cs] = z[indices[cs] % BLOCK, cs - g * cps]
    return out * layout.mask


def free_noise(step_seed: int, n: int) -> torch.Tensor:
    """Shared standard normals (n,) for dimensions that carry no information (tile padding, x_T)."""
    return torch.randn(n, generator=_gen(mix_seed(step_seed, 3)))
