"""Lockstep batch coding (ddpmcodec.batch.lockstep): images coded at once with pooled network calls.

Batch coding pools only on non-CPU devices. These tests run the same pooling on the CPU with a model whose
eps_reproducible takes the device path (DiffusionModel.eps_device_groups: fixed-shape calls), and check that the
files and decoded images are the single-image ones byte for byte, that requests at different t and shapes are
served apart, and that an error reaches every waiting thread instead of hanging it."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from ddpmcodec.batch.lockstep import PooledNetwork, run_lockstep
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.network.model_io import DEVICE_GROUP
from ddpmcodec.testing import make_tiny_model, smooth_image

SETTINGS = CodecSettings(n_steps=8, budget_bits=6, margin_bits=2)


class DeviceLikeModel:
    """A DiffusionModel whose codec calls take the device path (fixed-shape groups) on the CPU."""

    def __init__(self, model):
        self._model = model

    def __getattr__(self, name):
        return getattr(self._model, name)

    def eps_reproducible(self, x, t, workers=None):
        return self._model.eps_device_groups(x, t).to(x.device)


class ElementwiseModel:
    """A stand-in network whose output for a sample depends only on that sample and t; counts its calls."""

    device = torch.device("cpu")

    def __init__(self, fail_at_t: int | None = None):
        self.calls: list[tuple[int, int]] = []
        self.fail_at_t = fail_at_t

    def eps_device_groups(self, x, t):
        self.calls.append((int(t), len(x)))
        if t == self.fail_at_t:
            raise RuntimeError(f"device error at t={t}")
        return torch.tanh(x * 0.01 * t)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("lockstep"), resolution=8, seed=0)


@pytest.fixture(scope="module")
def device_like(model):
    """The device path: the model itself on DDPMCODEC_TEST_DEVICE where that is not the CPU (eval.gpu_check sets it
    on a GPU machine), else on this CPU; skipped where a sample's output depends on the samples sharing its call."""
    device = os.environ.get("DDPMCODEC_TEST_DEVICE", "cpu")
    m = model.to(device) if device != "cpu" else DeviceLikeModel(model)
    x = torch.randn(DEVICE_GROUP + 5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    alone = m.eps_device_groups(x[:1], 300)
    mixed = m.eps_device_groups(torch.cat([x[5:9], x[:1], x[9:]]), 300)
    if not torch.equal(alone[0], mixed[4]):
        pytest.skip("this CPU's kernels make a sample's output depend on its batch mates")
    return m


def _images():
    return [smooth_image(8, 8, seed=1), smooth_image(10, 12, seed=2), smooth_image(6, 9, seed=3),
            smooth_image(8, 8, seed=4), smooth_image(16, 8, seed=5)]


def _settings(i: int) -> CodecSettings:
    return SETTINGS if i % 2 == 0 else CodecSettings(n_steps=6, budget_bits=6, margin_bits=2)


def test_pooled_files_are_the_single_image_files(device_like):
    images = _images()
    single = [encode(px, device_like, _settings(i)).data for i, px in enumerate(images)]
    lossy = encode(images[0], device_like, SETTINGS, stop_at_t=300).data
    jobs = list(enumerate(images)) + [(-1, images[0])]

    def code(job, network):
        i, px = job
        if i < 0:
            return encode(px, network, SETTINGS, stop_at_t=300).data
        return encode(px, network, _settings(i)).data

    files, stats = run_lockstep(jobs, code, device_like, width=4)
    assert files == single + [lossy]
    assert stats.flushes < stats.requests  # requests were pooled, not served one by one

    def decode(data, network):
        return [(s.t, s.pixels) for s in decode_progressive(data, network, every_step=False)]

    decoded, _ = run_lockstep(files, decode, device_like, width=3)
    for data, got in zip(files, decoded):
        want = [(s.t, s.pixels) for s in decode_progressive(data, device_like, every_step=False)]
        assert [t for t, _ in got] == [t for t, _ in want]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want))
    assert [t for t, _ in decoded[0]] == [0]
    assert np.array_equal(decoded[0][-1][1], images[0])


def test_requests_at_different_t_and_shapes_are_served_apart():
    net = ElementwiseModel()
    pooled = PooledNetwork(net, 3)
    inputs = [(torch.randn(2, 3, 8, 8), 10), (torch.randn(1, 3, 8, 8), 20), (torch.randn(3, 3, 4, 4), 10)]
    out: dict[int, torch.Tensor] = {}

    def ask(k):
        try:
            x, t = inputs[k]
            out[k] = pooled.eps_reproducible(x, t)
        finally:
            pooled.leave()

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    for k, (x, t) in enumerate(inputs):
        assert torch.equal(out[k], torch.tanh(x * 0.01 * t))
    assert sorted(net.calls) == [(10, 2), (10, 3), (20, 1)]  # one call per t and shape, all in one flush
    assert pooled.stats.flushes == 1 and pooled.stats.requests == 3


def test_a_device_error_reaches_every_waiting_thread_and_nobody_hangs():
    net = ElementwiseModel(fail_at_t=7)

    def code(t, network):
        try:
            network.eps_reproducible(torch.ones(1, 3, 4, 4), t)
            network.eps_reproducible(torch.ones(1, 3, 4, 4), 1)
            return "ok"
        except RuntimeError as exc:
            return str(exc)

    results, stats = run_lockstep([7, 5, 7, 3, 9], code, net, width=3)
    assert results == ["device error at t=7", "ok", "device error at t=7", "ok", "ok"]
    assert stats.requests == 8


def test_a_participant_that_stops_early_releases_the_others():
    net = ElementwiseModel()

    def code(n_calls, network):
        for _ in range(n_calls):
            network.eps_reproducible(torch.zeros(1, 3, 4, 4), 2)
        return n_calls

    results, stats = run_lockstep([0, 5, 1, 3], code, net, width=4)
    assert results == [0, 5, 1, 3] and stats.requests == 9
    assert stats.flushes == 5  # the longest participant's five steps, the others joined while they ran
