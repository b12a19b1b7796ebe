"""The report pipeline end to end on a tiny random model: outputs, CompressAI structure, caching, classic codecs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.testing import make_tiny_model
from eval.report import main as report
from eval.report import classic
from eval.report import model as rm
from eval.report.cache import Cache
from eval.report.write import psnr_at

SMALL = DiffusionConfig(T=20, beta_start=1e-3, beta_end=0.2)


def _natural_ish(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields plus a little noise: bpp of lossy codecs grows with quality on these."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size, 3))
        for c in range(3):
            for _ in range(4):
                fx, fy, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += rng.uniform(20, 50) * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
        img += 128 + rng.normal(0, 6, img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    model = make_tiny_model(tmp, resolution=8, seed=0, diffusion=SMALL)
    np.savez(tmp / "images.npz", images=_natural_ish(3))
    return tmp, model


def _argv(tmp, out="out", *extra):
    return ["--model", str(tmp / f"{_model_name()}.safetensors"), "--images", str(tmp / "images.npz"),
            "--limit", "3", "--bound-limit", "2", "--split-limit", "3", "--split-t-samples", "3",
            "--strip-images", "2", "--strip-t", "20,10,4",
            "--steps", "4", "--t-end", "2", "--budget", "6", "--margin", "2", "--threads", "1",
            "--out", str(tmp / out), "--cache", str(tmp / "cache"), "--bitsback-json", str(tmp / "none.json"),
            "-q", *extra]


def _model_name():
    return "tiny-r8-s0"


@pytest.fixture(scope="module")
def first_run(setup):
    tmp, _ = setup
    assert report.main(_argv(tmp)) == 0
    return tmp / "out"


def test_outputs_written_with_compressai_structure(first_run):
    out = first_run
    for name in ("README.md", "fig5.png", "rd.png", "strip.png", "lossless.json", "summary.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for png in ("fig5.png", "rd.png", "strip.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    files = sorted((out / "results").glob("*.json"))
    names = {json.loads(f.read_text())["name"] for f in files}
    assert {"DDPM progressive (coded)", "DDPM ideal (bound)", "JPEG"} <= names
    for f in files:
        r = json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name}: non-strict JSON {c}"))
        assert isinstance(r["name"], str) and isinstance(r["description"], str)
        res = r["results"]
        assert len(res["bpp"]) == len(res["psnr-rgb"]) >= 2
        assert all(len(v) == len(res["bpp"]) for v in res.values()), f.name
        assert all(b is None or b >= 0 for b in res["bpp"])
    coded = json.loads((out / "results" / "ddpm-progressive-coded.json").read_text())["results"]
    assert np.all(np.diff(coded["bpp"]) > 0)  # truncated files only grow
    jpeg = json.loads((out / "results" / "jpeg.json").read_text())["results"]
    if classic.msssim_available():
        assert all(0 < v <= 1 for v in jpeg["ms-ssim-rgb"])


def test_summary_counts_and_lossless(first_run):
    s = json.loads((first_run / "summary.json").read_text())
    assert s["n_images"] == 3 and s["n_bound"] == 2 and s["n_strip"] == 2
    assert s["bound_summary"]["n_images"] == 2 and s["bound_summary"]["mode"] == "exact"
    assert s["n_split"] == 3 and s["split_summary"]["mode"] == "mc" and s["split_summary"]["t_samples"] == 3
    assert s["coded"]["n_images"] == 3
    lossless = {r["name"]: r for r in json.loads((first_run / "lossless.json").read_text())}
    assert lossless["DDPM bits-back (one file for the set)"]["status"] == "not run"
    assert "python -m eval.bitsback_bench" in lossless["DDPM bits-back (one file for the set)"]["note"]
    for name in ("PNG", "DDPM progressive-to-lossless (coded)", "DDPM ideal: bound total (NLL)"):
        assert lossless[name]["bpd"] > 0
    md = (first_run / "README.md").read_text()
    for text in ("python -m eval.report", "fig5.png", "rd.png", "strip.png", "| 20 | 1 |", "not run",
                 "3 images, 3 t/image", "2 images, exact"):
        assert text in md


def test_cache_hits_skip_recomputation(setup, first_run, monkeypatch):
    tmp, _ = setup

    def boom(*a, **k):
        raise AssertionError("recomputed although cached")

    for mod, name in ((rm, "model_bound"), (rm, "bench"), (rm, "encode"), (classic, "run_codec")):
        monkeypatch.setattr(mod, name, boom)
    assert report.main(_argv(tmp, "out2")) == 0
    s = json.loads((tmp / "out2" / "summary.json").read_text())
    assert s["cache"]["misses"] == 0 and s["cache"]["hits"] > 0
    a = json.loads((first_run / "results" / "ddpm-progressive-coded.json").read_text())
    b = json.loads((tmp / "out2" / "results" / "ddpm-progressive-coded.json").read_text())
    assert a["results"]["bpp"] == b["results"]["bpp"]


def test_bound_chunks_merge_like_one_result(setup, tmp_path):
    _, model = setup
    images = _natural_ish(3, seed=1)
    merged, _ = rm.bound_exact(model, images, 0, Cache(tmp_path), chunk=2)
    parts = [rm.model_bound(model, images[a:b], seed=a) for a, b in ((0, 2), (2, 3))]
    rate = np.concatenate([p.rate for p in parts])
    np.testing.assert_allclose(merged.rate, rate, rtol=1e-12)
    mse = (parts[0].per_t["mse_x0_clip"] * 2 + parts[1].per_t["mse_x0_clip"]) / 3
    np.testing.assert_allclose(merged.per_t["mse_x0_clip"], mse, rtol=1e-12)
    assert merged.summary()["total_bpd"] == pytest.approx(float(np.mean(rate + merged.distortion)))
    assert merged.table4(steps=(20,))[0]["rate_bpd"] == pytest.approx(float(np.mean(rate)))


def test_classic_sweeps_bpp_grows_with_quality():
    images = _natural_ish(4, seed=2)
    lossy, _ = classic.lossy_codecs()
    assert {c.key for c in lossy} >= {"jpeg"}
    for codec in lossy:
        pts = classic.sweep(codec, images)["points"]
        bpp = np.array([p["bpp"] for p in pts])
        psnr = np.array([p["psnr_db"] for p in pts])
        assert bpp[-1] > 2 * bpp[0], codec.key
        assert np.mean(np.diff(bpp) > 0) >= 0.8, (codec.key, bpp)  # monotone-ish
        assert psnr[-1] > psnr[0] + 5, codec.key
        assert all(p["bytes_total"] * 8 / (4 * 32 * 32) == pytest.approx(p["bpp"]) for p in pts)


def test_lossless_baselines_round_trip_exactly():
    images = _natural_ish(2, seed=3)
    codecs, _ = classic.lossless_codecs()
    assert {c.key for c in codecs} >= {"png"}
    for codec in codecs:
        p = classic.sweep(codec, images, exact=True)["points"][0]
        assert p["exact"] and p["psnr_db"] == classic.PSNR_CAP_DB and 0 < p["bpd"] < 8
    fake = classic.Codec("fake", "fake", (None,), lambda px, q: px.tobytes(),
                         lambda d: np.clip(np.frombuffer(d, np.uint8).reshape(32, 32, 3).astype(int) + 1, 0, 255)
                         .astype(np.uint8), "", "")
    with pytest.raises(RuntimeError, match="bit-exactly"):
        classic.run_codec(fake, images, None, exact=True)


def test_msssim_and_psnr_metrics():
    pytest.importorskip("torchmetrics")
    images = _natural_ish(3, seed=4)
    assert np.allclose(classic.msssim_per_image(images, images), 1.0)
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 8, images.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(images + np.random.default_rng(0).normal(0, 30, images.shape), 0, 255).astype(np.uint8)
    a, b = classic.msssim_per_image(noisy, images), classic.msssim_per_image(noisier, images)
    assert np.all(b < a) and np.all(a < 1)
    p = classic.psnr_per_image(noisy, images)
    mse = ((noisy.astype(float) - images) ** 2).reshape(3, -1).mean(1)
    np.testing.assert_allclose(p, 10 * np.log10(255 ** 2 / mse))
    assert classic.msssim_per_image(images[:, :16, :16], images[:, :16, :16]) is None  # too small: not reported


def test_psnr_at_interpolates_in_log_bpp():
    assert psnr_at([1.0, 4.0], [20.0, 30.0], 2.0) == pytest.approx(25.0)
    assert psnr_at([1.0, 4.0], [20.0, 30.0], 8.0) is None
    assert psnr_at([0.0, 1.0, 4.0], [5.0, 20.0, math.nan], 0.5) is None


def test_bitsback_json_reader(tmp_path):
    p = tmp_path / "bb.json"
    assert report.read_bitsback(p)["status"] == "not run"
    p.write_text("{}")
    assert report.read_bitsback(p)["status"] == "unreadable"
    p.write_text(json.dumps({"steps": 100, "set_run": {"images": 10, "bpd": 4.1, "net_bpd": 3.9},
                             "extrapolated_500": {"bpd": 3.95}}))
    row = report.read_bitsback(p)
    assert row["bpd"] == 4.1 and row["net_bpd"] == 3.9 and row["n_images"] == 10


def test_cli_report_help():
    from cli.main import main

    res = CliRunner().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "--bound-limit" in res.output and "ddpmcodec report" in res.output
