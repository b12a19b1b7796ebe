"""eval.gpu_check's CPU dry-run path: every part of the prepared GPU check runs (tiny model, generated images)."""
from __future__ import annotations

import json

from eval.gpu_check import main


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu.json"
    assert main(["--dry-run", "--probe-images", "2", "--batch-workers", "1", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for part in ("device", "channel_parity", "margin_probe", "throughput", "pooling", "largest_budget",
                 "cross_device", "batch_workers_1", "batch_workers_2"):
        assert r[part]["ok"], r[part]
    assert r["channel_parity"]["rebuilt_bit_identical"] and r["channel_parity"]["picks_that_differ"] == 0
    assert r["cross_device"]["lossless_exact"] == r["cross_device"]["files"] > 0
    assert r["cross_device"]["portable_exact_on_cpu"] == r["cross_device"]["portable_files"] > 0
    assert r["throughput"]["encode_images_per_s"] > 0
    for part in ("batch_workers_1", "batch_workers_2"):
        assert r[part]["files_identical_to_single_image"] == r[part]["files_compared_with_single_image"] > 0
        assert r[part]["decodes_bit_exact"] == r[part]["images"]
    pooling = r["pooling"]
    assert pooling["placements_checked"] == 9 and pooling["lockstep_images"] == 2
    assert pooling["requests"] > pooling["flushes"] > 0  # the two images' calls were pooled
    assert set(pooling["eager_seconds_per_call_by_batch"]) == {"1", "8", "32", "64", "128", "256"}
    assert pooling["fixed_call_equals_eager"]  # independence of batch mates is a device's property: reported only
    rows = r["margin_probe"]["rows"]
    assert [(row["budget_bits"], row["margin_bits"]) for row in rows] == [(6, 0), (4, 2)]
    assert all(row["lossless_bits_per_dim"] > 0 and row["psnr_db_within_2bpp_stream"] > 0 for row in rows)


def test_numerics_probe_runs_on_the_cpu(tmp_path):
    from ddpmcodec.testing import make_tiny_model
    from eval.gpu_numerics_probe import main as probe

    make_tiny_model(tmp_path, resolution=8, seed=0)
    out = tmp_path / "probe.json"
    assert probe(["--device", "cpu", "--model", str(tmp_path / "tiny-r8-s0.safetensors"), "--groups", "4",
                  "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for setting in ("torch_defaults", "cudnn_deterministic", "deterministic_tf32_off", "cudnn_off_tf32_off"):
        assert len(r[setting]["rows"]) == 9
    assert list(r["codec_numerics_by_group"]) == ["4"] and len(r["codec_numerics_by_group"]["4"]["rows"]) == 9
    assert "graphs" not in r and r["command"].startswith("python -m eval.gpu_numerics_probe --device cpu")
