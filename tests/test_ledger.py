"""eval.ledger on tiny random models: every column's bookkeeping, the unbiased interval sampler, (a) against the
exact bound, the lossless split, resumable per-image cache and the outputs (no ../shared needed)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ddpmcodec.bound import model_bound
from ddpmcodec.codec.progressive import CodecSettings
from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.schedule.steps import equal_kl_schedule, profile_for
from ddpmcodec.testing import make_tiny_model, smooth_image
from eval import ledger

SMALL = DiffusionConfig(T=20, beta_start=1e-3, beta_end=0.2)
SETTINGS = CodecSettings(n_steps=4, t_end=2, budget_bits=6, margin_bits=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("ledger")


@pytest.fixture(scope="module")
def model(model_dir):
    return make_tiny_model(model_dir, resolution=8, seed=0, diffusion=SMALL)  # writes tiny-r8-s0.safetensors


@pytest.fixture(scope="module")
def record(model):
    return ledger.ledger_image(model, smooth_image(16, 16, seed=1), SETTINGS, index=3, t_samples=2, seed=0,
                               verify=True)


def test_columns_are_consistent(model, record):
    steps = equal_kl_schedule(profile_for(model), SETTINGS.n_steps, SETTINGS.t_end, SETTINGS.prior, model.diffusion)
    r = record
    assert r["t"] == steps and steps[0] == 20 and steps[-1] == 2
    for key in ("model_cum_bits", "schedule_cum_bits", "chain_cum_bits", "stream_bits", "file_bits", "psnr_db"):
        assert len(r[key]) == len(steps), key
    for key in ("model_cum_bits", "schedule_cum_bits", "chain_cum_bits", "stream_bits", "file_bits"):
        assert np.all(np.diff(r[key]) >= -1e-9), key  # cumulative: never decreases
    assert r["chain_cum_bits"][0] == 0 and r["stream_bits"][0] == 0
    assert r["model_cum_bits"][0] == pytest.approx(r["schedule_cum_bits"][0])  # both: the prior term only
    assert 0 <= r["model_cum_bits"][0] < 0.05 * 768  # the prior KL, small (T = 20 here)
    assert all(f >= s for f, s in zip(r["file_bits"], r["stream_bits"]))
    assert all(f % 8 == 0 for f in r["file_bits"])
    ll = r["lossless"]
    assert ll["steps_stream_bits"] + ll["x0_stream_bits"] + ll["header_bits"] + ll["termination_bits"] == \
        ll["file_bits"]
    assert ll["steps_stream_bits"] == r["stream_bits"][-1]
    assert 0 <= ll["termination_bits"] <= 64 and ll["header_bits"] > 0
    assert ll["chain_steps_bits"] == pytest.approx(r["chain_cum_bits"][-1])
    assert ll["x0_layer_bits"] > 0 and r["schedule_x0_layer_bits"] > 0
    assert r["model_nelbo_bits"] > r["model_cum_bits"][-1] and "decode_s" in r


def test_interval_sampler_is_unbiased(model):
    profile = profile_for(model)
    steps = [20, 9, 4, 2]
    f = np.sin(np.arange(21)) + 2.0  # any per-step term
    truth = {}
    bounds = steps + [1]
    for j in range(len(bounds) - 1):
        truth[j] = f[bounds[j + 1] + 1: bounds[j] + 1].sum()
    # enough samples: every interval enumerated, weights 1
    exact = ledger.interval_samples(profile, steps, 50, np.random.default_rng(0))
    assert all(e and w == 1.0 for _, w, _, e in exact)
    assert sorted(s for s, *_ in exact) == list(range(2, 21))
    # sampled: mean of the weighted sums over many draws -> the interval sums
    rng = np.random.default_rng(1)
    est = np.zeros((2000, len(truth)))
    for r in range(len(est)):
        for s, w, j, _ in ledger.interval_samples(profile, steps, 2, rng):
            est[r, j] += w * f[s]
    se = est.std(0, ddof=1) / np.sqrt(len(est))
    assert np.all(np.abs(est.mean(0) - [truth[j] for j in range(len(truth))]) <= 4 * se + 1e-9)
    assert est[:, 0].std() > 0 and est[:, 3].std() < 1e-9  # long interval sampled, (1, 2] enumerated


def test_model_ideal_with_every_step_is_the_exact_bound(model):
    """fixedlarge prior, every step enumerated, one tile per image: the very draws and terms of ddpmcodec.bound."""
    im = smooth_image(8, 8, seed=2)
    steps = [20, 12, 6, 3]
    a = ledger.model_ideal(model, im, steps, "fixedlarge", k=100, seed=5, image=0)
    b = model_bound(model, im[None], seed=5)
    dims = im.size
    assert a["n_evals"] == 20
    assert a["nelbo_bits"] / dims == pytest.approx(float(b.rate_clip[0] + b.distortion[0]), rel=1e-6)
    term = b.per_t["term_clip"]  # index i <-> t = i + 1
    for t, cum in zip(steps, a["cum_bits"]):
        assert cum / dims == pytest.approx(float(b.prior[0] + term[t:].sum()), rel=1e-6, abs=1e-9)


def test_aggregate_and_markdown(record):
    other = json.loads(json.dumps(record))
    other["file_bits"] = [v + 80 for v in other["file_bits"]]
    g = ledger.aggregate([record, other], 16 * 16 * 3)
    assert g["n_images"] == 2 and g["t"] == record["t"]
    assert g["stops"]["file"][1] == pytest.approx((2 * record["file_bits"][1] + 80) / 2 / 768)
    assert g["stops"]["file_se"][1] == pytest.approx(40 / 768)  # sd 80/sqrt(2), over sqrt(2) images
    assert g["lossless"]["chain"] == pytest.approx(
        (record["lossless"]["chain_steps_bits"] + record["lossless"]["x0_layer_bits"]) / 768)
    r = {"aggregate": g, "command": "python -m eval.ledger --limit 2", "model": "m", "model_identity": "x",
         "images_desc": "d", "settings": {}, "format_version": 0, "t_samples": 2, "wall_s": 1.0,
         "cache": {"hits": 0}, "threads": 1}
    md = ledger.markdown(r)
    assert "| 0 (lossless) |" in md and "coder termination" in md and "python -m eval.ledger" in md
    assert md.count("\n| ") >= len(record["t"]) + 6


def test_main_writes_outputs_and_resumes(model, model_dir, tmp_path, monkeypatch):
    np.savez(tmp_path / "imgs.npz", images=np.stack([smooth_image(16, 16, seed=s) for s in range(2)]))
    args = ["--model", str(model_dir / "tiny-r8-s0.safetensors"), "--images", str(tmp_path / "imgs.npz"),
            "--limit", "2", "--steps", "4", "--t-end", "2", "--budget", "6", "--margin", "2", "--t-samples", "2",
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"), "-q"]
    assert ledger.main(args) == 0
    md = list((tmp_path / "out").glob("ledger_*.md"))
    js = list((tmp_path / "out").glob("ledger_*.json"))
    assert len(md) == len(js) == 1
    r = json.loads(js[0].read_text())
    assert r["aggregate"]["n_images"] == 2 and len(r["per_image"]) == 2

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(ledger, "ledger_image", boom)
    assert ledger.main(args) == 0  # every image from the cache
    assert json.loads(js[0].read_text())["cache"]["hits"] == 2


def test_skips_without_shared_and_one_line_errors(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DDPMCODEC_SHARED", str(tmp_path / "nowhere"))
    from ddpmcodec import data

    monkeypatch.setattr(data, "default_shared_dir", lambda: None)
    assert ledger.main(["--limit", "1"]) == 0
    assert capsys.readouterr().err.startswith("skipped:")
    assert ledger.main(["--images", str(tmp_path / "missing.npz")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
