"""The exact x_0 layer's context model: exact round trips, integer-exact means, context helps correlated residuals."""
from __future__ import annotations

import numpy as np
import pytest

from ddpmcodec.entropy import rans as entropy

from ddpmcodec.entropy import pixelmodel


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
    flat = min(entropy.pixel_bits(pixels.ravel(), rows.ravel(), i) for i in range(64))
    assert with_ctx < 0.9 * flat
    assert all(-128 <= c <= 127 for c in params.coefs) and len(params.coefs) == pixelmodel.N_COEFS


def test_params_symbols_round_trip():
    p = pixelmodel.PixelParams((1, 2, 63), tuple(range(-128, -128 + pixelmodel.N_COEFS)), alpha=31)
    assert pixelmodel.PixelParams.from_symbols(p.symbols()) == p


def _edgy_case(seed):
    """Residuals whose size follows the local change of the means (as denoising errors do at edges)."""
    rng = np.random.default_rng(seed)
    base = np.where(rng.random((32, 32, 1)) < 0.3, rng.integers(0, 255, (32, 32, 1)), 128).astype(np.float64)
    base = np.repeat(base, 3, axis=2)
    rows = entropy.quantize_pixel_means(base)
    change = np.stack([pixelmodel.neighbour_change(rows[..., c]) for c in range(3)], -1) / 8.0
    pixels = np.clip(np.round(base + rng.normal(0, 0.3 + 0.05 * change)), 0, 255).astype(np.uint8)
    return pixels, rows


def test_scale_adapts_where_residuals_follow_the_context():
    pixels, rows = _edgy_case(3)
    params = pixelmodel.fit(pixels, rows)
    assert params.alpha > 0
    r8 = pixelmodel.residual8(pixels, rows)
    cond = [pixelmodel.conditional_rows(rows, r8, params.coefs, c).ravel() for c in range(3)]
    best_fixed = [min(range(64), key=lambda i: entropy.pixel_bits(pixels[..., c].ravel(), cond[c], i)) for c in range(3)]
    fixed = pixelmodel.PixelParams(tuple(best_fixed), params.coefs, 0)  # one scale per channel, as before
    assert pixelmodel.code_length_bits(pixels, rows, params) < 0.9 * pixelmodel.code_length_bits(pixels, rows, fixed)
    coder = entropy.new_coder()
    pixelmodel.push(coder, pixels, rows, params)
    np.testing.assert_array_equal(pixelmodel.pop(entropy.new_coder(coder.get_compressed()), rows), pixels)


def test_log8_is_a_monotone_integer_log():
    v = np.arange(1, 70000, dtype=np.int64)
    got = pixelmodel.log8(v)
    assert got.dtype == np.int64 and np.all(np.diff(got) >= 0)
    assert np.all(np.abs(got - 8 * np.log2(v)) < 1.7)
    p = 2 ** np.arange(40, dtype=np.int64)
    np.testing.assert_array_equal(pixelmodel.log8(p), 8 * np.arange(40))
