"""The exact x_0 layer's context model: exact round trips, integer-exact means, context helps correlated residuals."""
from __future__ import annotations

import numpy as np
import pytest

from ddpmcodec import entropy, pixelmodel


def _case(h, w, seed, corr=0.8):
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 3, (h, w, 1))
    noise = corr * base + (1 - corr) * rng.normal(0, 3, (h, w, 3))
    truth = np.clip(np.round(np.cumsum(rng.normal(0, 6, (h, w, 3)), axis=1) + 128), 0, 255)
    pixels = truth.astype(np.uint8)
    rows = entropy.quantize_pixel_means(np.clip(truth + noise, -10, 265))
    return pixels, rows


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (32, 32), (13, 4)])
def test_round_trip(shape):
    pixels, rows = _case(*shape, seed=sum(shape))
    params = pixelmodel.fit(pixels, rows)
    coder = entropy.new_coder()
    pixelmodel.push(coder, pixels, rows, params)
    bits = coder.num_bits()
    decoder = entropy.new_coder(coder.get_compressed())
    np.testing.assert_array_equal(pixelmodel.pop(decoder, rows), pixels)
    assert bits == pytest.approx(pixelmodel.code_length_bits(pixels, rows, params), rel=0.02, abs=64)


def test_context_beats_independent_coding_on_correlated_residuals():
    pixels, rows = _case(32, 32, seed=1, corr=0.9)
    params = pixelmodel.fit(pixels, rows)
    with_ctx = pixelmodel.code_length_bits(pixels, rows, params)
    flat = min(entropy.pixel_code_length_bits(pixels.ravel(), rows.ravel(), i) for i in range(64))
    assert with_ctx < 0.9 * flat
    assert all(-128 <= c <= 127 for c in params.coefs) and len(params.coefs) == pixelmodel.N_COEFS


def test_params_symbols_round_trip():
    p = pixelmodel.PixelParams((1, 2, 63), tuple(range(-128, -128 + pixelmodel.N_COEFS)))
    assert pixelmodel.PixelParams.from_symbols(p.symbols()) == p
