"""PFR channel simulation: layouts partition the dimensions, samples follow q, indices cost about the KL."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmcodec.channel import pfr as channel


@pytest.mark.parametrize("n_dims,n_chunks", [(10, 3), (3072, 7), (5, 9), (1, 1)])
def test_layout_is_a_partition(n_dims, n_chunks):
    lay = channel.ChunkLayout.make(n_dims, n_chunks, seed=3)
    used = lay.index[lay.mask]
    assert sorted(used.tolist()) == list(range(n_dims))
    sizes = lay.mask.sum(1)
    assert int(sizes.max() - sizes.min()) <= 1
    v = torch.arange(n_dims, dtype=torch.float32)
    torch.testing.assert_close(lay.scatter(lay.gather(v), n_dims), v)


def test_mix_seed_is_stable_and_spreads():
    assert channel.mix_seed(1, 2, 3) == channel.mix_seed(1, 2, 3)
    assert len({channel.mix_seed(0, k) for k in range(1000)}) == 1000
    assert 0 <= channel.mix_seed(2 ** 70, -5) < 2 ** 63


def _pfr_samples(n: int, mu_q: torch.Tensor, sd_q: float, mu_p: torch.Tensor, sd_p: float, n_candidates: int):
    d = len(mu_q)
    lay = channel.ChunkLayout.make(d, 1, seed=0)
    delta = (mu_p - mu_q) / sd_q
    xs, idx = [], []
    for trial in range(n):
        k = channel.pfr_select(trial, lay, delta, sd_p / sd_q, n_candidates)
        z = lay.scatter(channel.pfr_reconstruct(trial, lay, k), d)
        xs.append(mu_p + sd_p * z)
        idx.append(int(k[0]))
    return torch.stack(xs), np.array(idx)


def test_samples_follow_q_with_enough_candidates():
    """With KL ~ 3 bits and 2^12 candidates the chosen sample is (nearly exactly) distributed as q."""
    mu_q = torch.tensor([0.8, -0.5, 0.3, 0.0])
    sd_q, sd_p = 0.6, 1.0
    mu_p = torch.zeros(4)
    kl_bits = float(0.5 * (4 * math.log(sd_p ** 2 / sd_q ** 2) + (4 * sd_q ** 2 + (mu_q ** 2).sum()) / sd_p ** 2 - 4)
                    / math.log(2))
    xs, idx = _pfr_samples(600, mu_q, sd_q, mu_p, sd_p, 2 ** 12)
    se = sd_q / math.sqrt(len(xs))
    assert torch.all((xs.mean(0) - mu_q).abs() < 4.5 * se), xs.mean(0)
    assert float(xs.var(0).mean()) == pytest.approx(sd_q ** 2, rel=0.15)
    assert np.mean(np.log2(idx + 1)) <= kl_bits + 2.0  # E[log K] <= KL + O(1)


def test_too_few_candidates_bias_towards_p():
    """With far fewer candidates than the KL needs, samples are pulled towards the prior (documented trade-off)."""
    mu_q = torch.full((4,), 1.5)
    xs, _ = _pfr_samples(300, mu_q, 0.3, torch.zeros(4), 1.0, 4)
    assert float(xs.mean()) < 1.2


def test_candidate_generator_known_answer():
    channel.check_candidate_generator()  # raises if this torch build draws different candidates


@pytest.mark.parametrize("n_dims,n_chunks,ratio", [(20000, 900, 1.3), (9000, 40, 1.0), (5000, 3, 2.0)])
def test_parallel_selection_equals_serial(n_dims, n_chunks, ratio):
    """Segments are searched on parallel threads for large images; the indices must not depend on the count."""
    lay = channel.ChunkLayout.make(n_dims, n_chunks, seed=11)
    delta = torch.randn(n_dims, generator=torch.Generator().manual_seed(1)) * 0.7
    serial = channel.pfr_select(5, lay, delta, ratio, 256)
    for workers in (2, 3):
        torch.testing.assert_close(channel.pfr_select(5, lay, delta, ratio, 256, workers=workers), serial, rtol=0,
                                   atol=0)
    assert math.ceil(lay.n_chunks / lay.chunks_per_segment) >= 2  # really more than one segment


@pytest.mark.parametrize("n_dims,n_chunks,ratio", [(20000, 900, 1.3), (9000, 40, 1.0)])
def test_search_grouping_never_changes_indices(n_dims, n_chunks, ratio):
    """The CPU searches one segment at a time, other devices a whole run at once: the same indices, because every
    chunk's candidates and arrival times are its own streams and the early stop is exact."""
    lay = channel.ChunkLayout.make(n_dims, n_chunks, seed=4)
    dl = lay.gather(torch.randn(n_dims, generator=torch.Generator().manual_seed(2)) * 0.7)
    segment_wise = channel._pfr_select_segments(9, lay, dl, ratio, 256, range(math.ceil(lay.n_chunks /
                                                                                      lay.chunks_per_segment)))
    at_once = channel._pfr_select_chunks(9, lay, dl, ratio, 256, 0, lay.n_chunks)
    torch.testing.assert_close(segment_wise, at_once, rtol=0, atol=0)
    tail = channel._pfr_select_chunks(9, lay, dl, ratio, 256, 5, lay.n_chunks)  # any sub-range alone
    torch.testing.assert_close(tail, at_once[5:], rtol=0, atol=0)


def test_arrival_gaps_are_exponential():
    """The sender's counter-based arrival gaps: Exp(1) (mean 1, variance 1, P(gap > 3) = e^-3), finite, positive."""
    seeds = channel._arrival_seeds(77, 0, 2000, "cpu")
    gaps = torch.cat([channel._block_exponentials(seeds, b) for b in range(4)]).flatten()
    assert bool(torch.isfinite(gaps).all()) and float(gaps.min()) > 0
    n = gaps.numel()
    assert float(gaps.mean()) == pytest.approx(1.0, abs=5 / math.sqrt(n))
    assert float(gaps.var()) == pytest.approx(1.0, abs=12 / math.sqrt(n))
    assert float((gaps > 3).double().mean()) == pytest.approx(math.exp(-3), abs=5 * math.sqrt(math.exp(-3) / n))
    # candidates and arrivals of a chunk come from different streams
    assert not torch.equal(channel._chunk_seeds(77, 0, 2000, "cpu"), seeds)
