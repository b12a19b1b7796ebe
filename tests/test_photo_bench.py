"""eval.photo_bench runs end to end on a small crop (the timed parts it patches must exist) and reports shares."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib")

from eval.photo_bench import main  # noqa: E402


def test_photo_bench_small_crop(tmp_path):
    out = tmp_path / "photo.json"
    assert main(["--size", "32", "--threads", "1", "--device", "cpu", "--steps", "12", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["exact"] and r["device"] == "cpu" and r["bytes"] > 0 and r["n_steps"] == 12
    for side in ("encode", "decode"):
        shares = r[f"{side}_share"]
        assert shares["unet"] > 0 and abs(sum(shares.values()) - 1) < 1e-9
    assert r["encode_share"]["search"] > 0 and r["decode_share"]["search"] == 0
