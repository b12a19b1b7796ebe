"""eval.gpu_check's CPU dry-run path: every part of the prepared GPU check runs (tiny model, generated images)."""
from __future__ import annotations

import json

from eval.gpu_check import main


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--dry-run", "--probe-images", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for part in ("device", "channel_parity", "margin_probe", "throughput", "largest_budget", "cross_device", "batch"):
        assert r[part]["ok"], r[part]
    assert r["channel_parity"]["rebuilt_bit_identical"] and r["channel_parity"]["picks_that_differ"] == 0
    assert r["cross_device"]["lossless_exact"] == r["cross_device"]["files"] > 0
    assert r["throughput"]["encode_images_per_s"] > 0
    assert r["batch"]["files_identical_to_single_image"] == r["batch"]["files_compared_with_single_image"] > 0
    assert r["batch"]["decodes_bit_exact"] == r["batch"]["images"]
    rows = r["margin_probe"]["rows"]
    assert [(row["budget_bits"], row["margin_bits"]) for row in rows] == [(6, 0), (4, 2)]
    assert all(row["lossless_bits_per_dim"] > 0 and row["psnr_db_within_2bpp_stream"] > 0 for row in rows)
