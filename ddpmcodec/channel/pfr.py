"""Chunked channel simulation with the Poisson functional representation (Li & El Gamal 2018).

One coded step sends a sample of q = N(mu_q, var_q I) to a receiver that knows only p = N(mu_p, var_p I).
The dimensions (a flat vector of D coded values) are split by a seeded permutation into ``n_chunks`` chunks of
near-equal size. For each chunk both sides can generate the same candidates z_i ~ N(0, I) from a shared seed; the
sender picks K = argmin_i [log T_i - log q(x_i)/p(x_i)] over the first ``n_candidates`` (T_i: Poisson arrival
times known only to the sender) and sends K. The receiver rebuilds x = mu_p + sigma_p z_K.

Candidates are counter-based (counter_rng: SplitMix64 + a normal quantile table): value j of candidate i of chunk c
in a step is a pure function of (step seed, c, i, j), made of integer operations and a table lookup, so every device
and torch build draws the same bits, the search can run wherever the tensors live, and the receiver regenerates
only the chosen candidate of each chunk. The chunk permutation sorts counter-based keys (no torch.randperm).
The sender's arrival times T_i are counter-based per chunk as well (a stream apart from the candidates'), so
any group of chunks can be searched alone, in any order, on any device, with the same indices.
Indices do not depend on network outputs: float drift between sender and receiver changes x slightly (graceful),
never the parse of the stream.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ddpmcodec.channel import counter_rng
from ddpmcodec.parallel import map_one_thread_each

MASK64 = (1 << 64) - 1
BLOCK = 64  # candidates scored per search iteration (the early-stopping test runs between blocks)
SEGMENT_DIMS = 4096  # chunks are grouped into segments of about this many dimensions (the unit of parallel work)


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


def check_candidate_generator(device: str | torch.device = "cpu") -> None:
    """Known answers of the counter-based generator and its normal table on `device` (DeterminismError if not)."""
    counter_rng.check_device(device)


def _keys(seed: int, lo: int, hi: int, device) -> torch.Tensor:
    """(hi - lo,) int64: SplitMix64 outputs lo..hi-1 of the stream `seed` (uint64 bits)."""
    return counter_rng.splitmix64(counter_rng.stream_seed(seed, 0),
                                  torch.arange(lo, hi, dtype=torch.int64, device=device))


def _chunk_seeds(step_seed: int, lo: int, hi: int, device) -> torch.Tensor:
    """(hi - lo,) int64 SplitMix64 seeds of chunks lo..hi-1 of the step's candidates, one stream per chunk."""
    return _keys(mix_seed(step_seed, 1), lo, hi, device)


def _arrival_seeds(step_seed: int, lo: int, hi: int, device) -> torch.Tensor:
    """(hi - lo,) int64 seeds of the sender's private arrival-time streams of chunks lo..hi-1 (never needed by
    the receiver; a stream apart from the candidates', so arrivals and candidates are independent)."""
    return _keys(mix_seed(step_seed, 2), lo, hi, device)


def _block_exponentials(seeds: torch.Tensor, block: int) -> torch.Tensor:
    """Exp(1) gaps of candidates block*BLOCK .. +BLOCK-1 of the chunks with these arrival seeds: (BLOCK, chunks)
    float64, -log u with u = (53 high bits + 1/2) / 2^53 in (0, 1), one SplitMix64 output per candidate."""
    index = (torch.arange(BLOCK, device=seeds.device) + block * BLOCK)[:, None]
    bits = counter_rng.splitmix64(seeds[None, :], index)
    u = ((bits >> 11) & ((1 << 53) - 1)).double().add_(0.5).mul_(2.0 ** -53)
    return u.log_().neg_()


def _width(d_max: int) -> int:
    """Candidate values generated per chunk: d_max rounded up to whole generator calls (4 normals each)."""
    return 4 * -(-d_max // 4)


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
        perm = torch.sort(_keys(seed, 0, n_dims, "cpu"), stable=True).indices  # counter-based: same on every build
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
        mask, index = self.mask.to(v.device), self.index.to(v.device)
        return torch.where(mask, v[index.clamp(min=0)], torch.zeros((), dtype=v.dtype, device=v.device))

    def scatter(self, values: torch.Tensor, n_dims: int) -> torch.Tensor:
        """(n_chunks, d_max) -> (D,)."""
        out = torch.empty(n_dims, dtype=values.dtype, device=values.device)
        mask = self.mask.to(values.device)
        out[self.index.to(values.device)[mask]] = values[mask]
        return out


def _block_candidates(seeds: torch.Tensor, d_max: int, block: int) -> torch.Tensor:
    """Candidates block*BLOCK .. +BLOCK-1 of the chunks with these seeds: (BLOCK, chunks, _width(d_max)) float32
    (slots past d_max are generated but never used)."""
    d4 = _width(d_max) // 4
    calls = (torch.arange(BLOCK, device=seeds.device) + block * BLOCK)[:, None, None] * d4 + torch.arange(
        d4, device=seeds.device)
    return counter_rng.splitmix_normals(seeds[None, :, None], calls)


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
    if dl.device.type != "cpu":  # one device: the search is already parallel there
        return _pfr_select_segments(step_seed, layout, dl, float(ratio), n_candidates, range(n_seg))
    if workers == 1:  # one intra-op thread: the search's many small ops lose more to thread wake-ups than they gain
        return map_one_thread_each(lambda run: _pfr_select_segments(step_seed, layout, dl, float(ratio), n_candidates,
                                                                    run), [range(n_seg)], 1)[0]
    parts = map_one_thread_each(lambda run: _pfr_select_segments(step_seed, layout, dl, float(ratio), n_candidates,
                                                                 run), runs, workers)
    return torch.cat(parts)


def _pfr_select_segments(step_seed: int, layout: ChunkLayout, dl: torch.Tensor, r: float, n_candidates: int,
                         segments: range) -> torch.Tensor:
    """pfr_select for the chunks of `segments` (a contiguous run): their indices, int64. On the CPU one segment at
    a time (a block of candidates of a segment, ~1 MiB, stays in cache; searching a whole run at once is several
    times slower per candidate on large images), on other devices the run at once. Every chunk's candidates and
    arrival times are its own counter-based streams and the early stop is exact, so the grouping never changes
    the indices."""
    cps = layout.chunks_per_segment
    lo, hi = segments.start * cps, min(layout.n_chunks, segments.stop * cps)
    if dl.device.type != "cpu":
        return _pfr_select_chunks(step_seed, layout, dl, r, n_candidates, lo, hi)
    return torch.cat([_pfr_select_chunks(step_seed, layout, dl, r, n_candidates, c, min(hi, c + cps))
                      for c in range(lo, hi, cps)])


def _pfr_select_chunks(step_seed: int, layout: ChunkLayout, dl: torch.Tensor, r: float, n_candidates: int,
                       lo: int, hi: int) -> torch.Tensor:
    """The PFR search of chunks lo..hi-1, searched together: their indices, int64 (hi - lo,)."""
    a = 0.5 * (1.0 - r * r)
    dev = dl.device
    d_max = layout.index.shape[1]
    pad = _width(d_max) - d_max  # zero weight for the generated slots past d_max
    dl = torch.nn.functional.pad(dl[lo:hi], (0, pad))
    maskf = torch.nn.functional.pad(layout.mask[lo:hi].to(dev).float(), (0, pad))
    n_chunks = hi - lo
    seeds = _chunk_seeds(step_seed, lo, hi, dev)
    arrival_seeds = _arrival_seeds(step_seed, lo, hi, dev)
    if r > 1.0 + 1e-9:
        upper = (r * r * dl.double() ** 2).sum(1) / (2.0 * (r * r - 1.0))
    else:
        upper = torch.full((n_chunks,), math.inf, dtype=torch.float64, device=dev)
    best = torch.full((n_chunks,), math.inf, dtype=torch.float64, device=dev)
    best_idx = torch.zeros(n_chunks, dtype=torch.long, device=dev)
    arrivals = torch.zeros(n_chunks, dtype=torch.float64, device=dev)
    for b in range(math.ceil(n_candidates / BLOCK)):
        z = _block_candidates(seeds, d_max, b)  # (BLOCK, n_chunks, width)
        score = a * (z * z * maskf).sum(-1) - r * (z * dl).sum(-1)  # (BLOCK, n_chunks)
        times = arrivals + torch.cumsum(_block_exponentials(arrival_seeds, b), 0)
        arrivals = times[-1]
        val = torch.log(times) - score.double()
        val = val[:min(BLOCK, n_candidates - b * BLOCK)]
        vmin, arg = val.min(0)
        better = vmin < best
        best = torch.where(better, vmin, best)
        best_idx = torch.where(better, arg + b * BLOCK, best_idx)
        if bool((torch.log(arrivals) - upper >= best).all()):
            break
    return best_idx


def pfr_reconstruct(step_seed: int, layout: ChunkLayout, indices: torch.Tensor) -> torch.Tensor:
    """Both sides: the chosen standard-normal candidates, (n_chunks, d_max) float32 (zeros in padding), on the
    device of `indices`. Only the chosen candidate of each chunk is generated."""
    dev = indices.device
    d_max = layout.index.shape[1]
    d4 = _width(d_max) // 4
    seeds = _chunk_seeds(step_seed, 0, layout.n_chunks, dev)
    calls = indices.long()[:, None] * d4 + torch.arange(d4, device=dev)
    return counter_rng.splitmix_normals(seeds[:, None], calls)[:, :d_max] * layout.mask.to(dev)


def free_noise(step_seed: int, n: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """Shared standard normals (n,) for dimensions that carry no information (tile padding, x_T)."""
    return counter_rng.normals(mix_seed(step_seed, 3), 0, n, method="splitmix", device=device)
