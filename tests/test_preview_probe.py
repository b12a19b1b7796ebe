"""eval.preview_probe (a dropped lever's probe) runs on a tiny model and reports a gain per t and estimator."""
from __future__ import annotations

import numpy as np

from ddpmcodec.codec.progressive import CodecSettings
from ddpmcodec.testing import make_tiny_model, smooth_image
from eval.preview_probe import FLIP_TS, LAMS, extrapolation_gain, flip_gain


def test_preview_probe_on_a_tiny_model(tmp_path):
    model = make_tiny_model(tmp_path, resolution=8, seed=0)
    images = np.stack([smooth_image(8, 8, seed=i) for i in range(2)])
    flip = flip_gain(model, images)
    assert sorted(flip) == sorted(FLIP_TS) and all(np.isfinite(r["flip_gain_db"]) for r in flip.values())
    chain = extrapolation_gain(model, images, CodecSettings(n_steps=6, budget_bits=6))
    assert len(chain) == 7  # one preview per level of the 6-step schedule, T to t_end
    for row in chain.values():
        assert set(row) == {"psnr_db"} | {f"gain_db_lam_{lam:g}" for lam in LAMS}
