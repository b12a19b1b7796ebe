"""PFR with sliding-window candidates (format versions 5 and 6): many more candidates per chunk for the same work.

Format version 4 (channel.pfr) draws every candidate of a chunk afresh, d_max normals each, so N candidates cost
N * d_max generated values and multiply-adds. Here candidate i of chunk c is z_i[j] = s_c[j] g_c[i + j]: a window
of one shared standard-normal sequence g_c of length N + d_max - 1 (counter-based: value k is normal k of the
chunk's SplitMix64 stream, see counter_rng) times a fixed random sign per slot s_c (a stream of its own). Every
candidate is exactly N(0, I), and the scores of all N candidates, sum_j [a z_j^2 - r delta_j z_j], come from one FFT
cross-correlation and one running sum: O(N log N) instead of O(N d_max). Windows overlap, so candidates are not
independent: their scores correlate as the signed deltas s_j delta_j do at each lag. The signs make that small
(about 1/sqrt(d)) whatever the deltas look like; without them a chunk whose deltas share a sign (an image-wide
offset) would see nearly the same score in neighbouring windows. What the larger chunks and N buy is measured in
docs/results/chunk_budget_train16/.

The sender's arrival times are those of channel.pfr (the same per-chunk counter-based streams), and the receiver
regenerates only the chosen window. Chunks are searched in fixed groups, so the indices are the same for any
number of workers.
"""
from __future__ import annotations

import torch

from ddpmcodec.channel import counter_rng
from ddpmcodec.channel.pfr import ChunkLayout, _arrival_seeds, _chunk_seeds, _keys, mix_seed
from ddpmcodec.parallel import map_one_thread_each

GROUP_VALUES = 1 << 20  # candidates searched at once (summed over the chunks of a group), bounds the memory
SEGMENT = 8192  # outputs per overlap-save block of the FFT correlation


def sequence(seeds: torch.Tensor, start: torch.Tensor, length: int) -> torch.Tensor:
    """(n, length) float32: values start[c] .. start[c] + length - 1 of the normal sequences with these seeds
    (value k is field k % 4 of SplitMix64 call k // 4, through counter_rng's normal table)."""
    first = start // 4
    calls = first[:, None] + torch.arange(-(-(length + 3) // 4), device=seeds.device)[None, :]
    values = counter_rng.splitmix_normals(seeds[:, None], calls)
    offset = (start - 4 * first)[:, None] + torch.arange(length, device=seeds.device)[None, :]
    return torch.gather(values, 1, offset)


def signs(step_seed: int, lo: int, hi: int, d_max: int, device) -> torch.Tensor:
    """(hi - lo, d_max) float32 +-1: the slot signs of chunks lo..hi-1 (bit 63 of SplitMix64 output j of each
    chunk's sign stream)."""
    seeds = _keys(mix_seed(step_seed, 4), lo, hi, device)
    bits = counter_rng.splitmix64(seeds[:, None], torch.arange(d_max, device=device)[None, :])
    return torch.where(bits < 0, -1.0, 1.0).float()


def _group_size(n_candidates: int) -> int:
    return max(1, GROUP_VALUES // n_candidates)


def window_select(step_seed: int, layout: ChunkLayout, delta: torch.Tensor, ratio: float, n_candidates: int,
                  workers: int = 1) -> torch.Tensor:
    """Sender side: the PFR index of every chunk, int64 (n_chunks,). Arguments as channel.pfr.pfr_select; on the
    CPU, runs of fixed chunk groups go to `workers` parallel one-thread workers."""
    dl = layout.gather(delta.float())
    group = _group_size(n_candidates)
    runs = [(lo, min(layout.n_chunks, lo + group)) for lo in range(0, layout.n_chunks, group)]

    def search(part: list[tuple[int, int]]) -> torch.Tensor:
        return torch.cat([_select_chunks(step_seed, layout, dl, float(ratio), n_candidates, lo, hi) for lo, hi in part])

    if dl.device.type != "cpu":
        return search(runs)
    workers = max(1, min(workers, len(runs)))
    parts = [runs[round(i * len(runs) / workers): round((i + 1) * len(runs) / workers)] for i in range(workers)]
    return torch.cat(map_one_thread_each(search, parts, workers))


def _select_chunks(step_seed: int, layout: ChunkLayout, dl: torch.Tensor, r: float, n_candidates: int,
                   lo: int, hi: int) -> torch.Tensor:
    """The search of chunks lo..hi-1 (one group): their indices, int64 (hi - lo,)."""
    dev = dl.device
    d_max = layout.index.shape[1]
    sizes = layout.mask[lo:hi].sum(1).to(dev)
    length = n_candidates + d_max - 1
    seeds = _chunk_seeds(step_seed, lo, hi, dev)
    g = sequence(seeds, torch.zeros(hi - lo, dtype=torch.int64, device=dev), length)
    kernel = dl[lo:hi] * signs(step_seed, lo, hi, d_max, dev)
    corr = _correlate(g, kernel, n_candidates)
    g = g.double()
    cum = torch.nn.functional.pad(torch.cumsum(g * g, 1), (1, 0))
    first = torch.arange(n_candidates, device=dev)[None, :]
    squares = torch.gather(cum, 1, first + sizes[:, None]) - cum[:, :n_candidates]
    score = (0.5 * (1.0 - r * r) * squares).float() - r * corr
    bits = counter_rng.splitmix64(_arrival_seeds(step_seed, lo, hi, dev)[:, None], first)
    u = ((bits >> 40) & 0xFFFFFF).float().add_(0.5).mul_(2.0 ** -24)  # 24 random bits: u in (0, 1), exact
    arrivals = torch.cumsum(u.log_().neg_().double(), 1).float()
    return torch.argmin(arrivals.log_() - score, 1)


def _correlate(g: torch.Tensor, kernel: torch.Tensor, n: int) -> torch.Tensor:
    """(chunks, n) float32: out[c, i] = sum_j kernel[c, j] g[c, i + j], by float32 FFTs (a score error of ~1e-5 can
    only swap near-tied candidates, and either pick decodes the same way). Overlap-save in blocks of SEGMENT outputs
    (FFTs of twice that) when n is larger: fewer operations than one long FFT, and they stay in cache."""
    d = kernel.shape[1]
    block = max(SEGMENT, 1 << (d - 1).bit_length())
    if block >= n:
        n_fft = 1 << (n + d - 2).bit_length()
        return torch.fft.irfft(torch.fft.rfft(g, n_fft) * torch.conj(torch.fft.rfft(kernel, n_fft)), n_fft)[:, :n]
    blocks = -(-n // block)
    padded = torch.nn.functional.pad(g, (0, (blocks + 1) * block - g.shape[1]))
    pieces = padded.unfold(1, 2 * block, block)  # (chunks, blocks, 2 * block): piece b starts at b * block
    spectrum = torch.fft.rfft(pieces, 2 * block) * torch.conj(torch.fft.rfft(kernel, 2 * block))[:, None, :]
    return torch.fft.irfft(spectrum, 2 * block)[:, :, :block].reshape(g.shape[0], -1)[:, :n]


def window_reconstruct(step_seed: int, layout: ChunkLayout, indices: torch.Tensor) -> torch.Tensor:
    """Both sides: the chosen windows, (n_chunks, d_max) float32 (zeros in padding), on the device of `indices`."""
    dev = indices.device
    d_max = layout.index.shape[1]
    seeds = _chunk_seeds(step_seed, 0, layout.n_chunks, dev)
    return sequence(seeds, indices.long(), d_max) * signs(step_seed, 0, layout.n_chunks, d_max, dev) \
        * layout.mask.to(dev)

