"""Format-5 PFR candidates (sliding windows of one signed sequence per chunk): what the sender scores by FFT is what
the receiver rebuilds, samples follow q, and the indices depend on nothing but the inputs."""
from __future__ import annotations

import math

import pytest
import torch

from ddpmcodec.channel import pfr, pfr_windows


def _direct_pick(step_seed: int, layout: pfr.ChunkLayout, delta: torch.Tensor, r: float, n: int) -> torch.Tensor:
    """PFR by brute force: every candidate rebuilt the receiver's way, scored directly, with the same arrivals."""
    dl = layout.gather(delta.float()).double()
    picks = []
    for c in range(layout.n_chunks):
        z = torch.stack([pfr_windows.window_reconstruct(step_seed, layout, torch.full((layout.n_chunks,), i))[c]
                         for i in range(n)]).double()  # (n, d_max)
        score = 0.5 * (1 - r * r) * (z * z).sum(1) - r * (z * dl[c]).sum(1)
        bits = pfr.counter_rng.splitmix64(pfr._arrival_seeds(step_seed, c, c + 1, "cpu")[:, None],
                                          torch.arange(n)[None, :])[0]
        u = ((bits >> 40) & 0xFFFFFF).double().add_(0.5).mul_(2.0 ** -24)
        picks.append(int(torch.argmin(torch.cumsum(-torch.log(u), 0).log() - score)))
    return torch.tensor(picks)


@pytest.mark.parametrize("segment", [8192, 64])  # one FFT; overlap-save in blocks of 128 outputs
def test_fft_search_picks_what_direct_scoring_picks(segment, monkeypatch):
    monkeypatch.setattr(pfr_windows, "SEGMENT", segment)
    lay = pfr.ChunkLayout.make(300, 3, seed=5)
    delta = torch.randn(300, generator=torch.Generator().manual_seed(3)) * 0.3
    fast = pfr_windows.window_select(21, lay, delta, 1.1, 256)
    torch.testing.assert_close(fast, _direct_pick(21, lay, delta, 1.1, 256), rtol=0, atol=0)


def test_candidates_are_signed_windows_of_one_sequence():
    lay = pfr.ChunkLayout.make(40, 2, seed=1)
    d_max = lay.index.shape[1]
    seeds = pfr._chunk_seeds(8, 0, 2, "cpu")
    g = pfr_windows.sequence(seeds, torch.zeros(2, dtype=torch.int64), 64 + d_max)
    s = pfr_windows.signs(8, 0, 2, d_max, "cpu")
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    for k in (0, 1, 5, 37, 63):
        z = pfr_windows.window_reconstruct(8, lay, torch.tensor([k, k]))
        torch.testing.assert_close(z, s * g[:, k:k + d_max] * lay.mask, rtol=0, atol=0)
    # the sequence addressed at an offset is the same sequence
    torch.testing.assert_close(pfr_windows.sequence(seeds, torch.tensor([5, 9]), 10),
                               torch.stack([g[0, 5:15], g[1, 9:19]]), rtol=0, atol=0)


@pytest.mark.parametrize("constant", [False, True])
def test_samples_follow_q_with_enough_candidates(constant):
    """KL ~ 5.5 bits, 2^13 candidates: the chosen x is close to q along the mean shift (mean 0, variance 1 in units
    of sigma_q); also when every delta has the same sign, where unsigned windows would correlate most."""
    lay = pfr.ChunkLayout.make(64, 1, seed=1)
    gen = torch.Generator().manual_seed(0)
    proj = []
    for trial in range(300):
        delta = torch.full((64,), -0.35) if constant else torch.randn(64, generator=gen) * 0.35
        idx = pfr_windows.window_select(trial, lay, delta, 1.02, 1 << 13)
        x = 1.02 * lay.scatter(pfr_windows.window_reconstruct(trial, lay, idx), 64) + delta  # N(0, I) under q
        proj.append(float(-(x * delta).sum() / delta.norm()))
    t = torch.tensor(proj)
    assert abs(float(t.mean())) < 0.2  # a sample from p would give -2.8
    assert float(t.var()) == pytest.approx(1.0, abs=0.25)


def test_too_few_candidates_bias_towards_p():
    lay = pfr.ChunkLayout.make(64, 1, seed=1)
    delta = torch.full((64,), -0.35)
    means = [float(pfr_windows.window_reconstruct(s, lay, pfr_windows.window_select(s, lay, delta, 1.02, 4)).mean())
             for s in range(100)]
    assert sum(means) / len(means) < 0.2  # q's mean is 0.34 (in units of sigma_p)


@pytest.mark.parametrize("n_candidates", [1 << 10, 1 << 19])
def test_indices_do_not_depend_on_workers_or_groups(n_candidates, monkeypatch):
    lay = pfr.ChunkLayout.make(6000, 12, seed=2)
    delta = torch.randn(6000, generator=torch.Generator().manual_seed(4)) * 0.5
    serial = pfr_windows.window_select(3, lay, delta, 1.2, n_candidates)
    assert torch.equal(pfr_windows.window_select(3, lay, delta, 1.2, n_candidates, workers=3), serial)
    monkeypatch.setattr(pfr_windows, "GROUP_VALUES", n_candidates * 5)  # other group boundaries
    assert torch.equal(pfr_windows.window_select(3, lay, delta, 1.2, n_candidates, workers=2), serial)
    assert int(serial.max()) < n_candidates and math.isfinite(float(serial.float().mean()))
