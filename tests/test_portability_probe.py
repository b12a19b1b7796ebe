"""eval.portability_probe: files decoded in fresh processes with other CPU kernels are exact or refused, never wrong."""
from __future__ import annotations

import numpy as np

from ddpmcodec.testing import make_tiny_model, smooth_image
from eval.portability_probe import SETTINGS, run


def test_portability_probe_on_a_tiny_model(tmp_path):
    make_tiny_model(tmp_path, resolution=8, seed=0)
    images = np.stack([smooth_image(8, 8, seed=3)])
    r = run(images, str(tmp_path / "tiny-r8-s0.safetensors"), {"generic": SETTINGS["generic"]},
            {"n_steps": 6, "budget_bits": 6})
    native, generic = r["settings"]["native"], r["settings"]["generic"]
    assert native["exact"] == 1 and native["digest"] == r["encoder_digest"]
    assert generic["wrong"] == 0 and generic["exact"] + generic["refused"] == 1
    if generic["refused"]:  # a refusal means the x_0 layer's inputs differed, so the chain must have drifted
        assert max(generic["x_t_drift_max"], generic["x0_drift_max"]) > 0
        assert generic["layer_inputs_changed_per_image"][0] > 0
