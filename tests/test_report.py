"""The report pipeline end to end on a tiny random model: outputs, CompressAI structure, caching, classic codecs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ddpmcodec.diffusion import DiffusionConfig
from ddpmcodec.testing import make_tiny_model
from eval.report import main as report
from eval.report import classic
from eval.report import model as rm
from eval.report import targets as rt
from ddpmcodec.batch.result_cache import Cache
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
            "--targets", "0.5,8,12,40",
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
    assert {"DDPM progressive (coded)", "DDPM ideal (bound)", "JPEG", "DDPM --target-bpp (coded, one file per target)"
            } <= names
    for f in files:
        r = json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f.name}: non-strict JSON {c}"))
        assert isinstance(r["name"], str) and isinstance(r["description"], str)
        res = r["results"]
        assert len(res["bpp"]) == len(res["psnr-rgb"]) >= 2
        assert all(len(v) == len(res["bpp"]) for v in res.values()), f.name
        assert all(b is None or b >= 0 for b in res["bpp"])
    coded = json.loads((out / "results" / "ddpm-progressive-coded.json").read_text())["results"]
    assert np.all(np.diff(coded["bpp"]) > 0)  # truncated files only grow
    if classic.msssim_available():  # CompressAI's plot tool reads ms-ssim-rgb from every results file
        for f in files:
            res = json.loads(f.read_text())["results"]
            assert len(res["ms-ssim-rgb"]) == len(res["bpp"]), f.name
            assert all(v is not None and -1 <= v <= 1 for v in res["ms-ssim-rgb"]), f.name
        ideal = json.loads((out / "results" / "ddpm-ideal-bound.json").read_text())["results"]
        assert ideal["ms-ssim-rgb"][-1] > ideal["ms-ssim-rgb"][0]  # t = 1 beats t = T


def test_summary_counts_and_lossless(first_run):
    s = json.loads((first_run / "summary.json").read_text())
    assert s["n_images"] == 3 and s["n_bound"] == 2 and s["n_strip"] == 2
    assert s["bound_summary"]["n_images"] == 2 and s["bound_summary"]["mode"] == "exact"
    assert s["n_split"] == 3 and s["split_summary"]["mode"] == "mc" and s["split_summary"]["t_samples"] == 3
    assert s["coded"]["n_images"] == 3
    per_target = s["targets"]
    assert per_target["n_images"] == 3 and per_target["targets"] == [0.5, 8, 12, 40]
    assert all(b <= t for b, t in zip(per_target["bpp"], per_target["targets"]))  # every file within its budget
    assert np.all(np.diff(per_target["bpp"]) > 0) and np.all(np.diff(per_target["psnr_db"][:3]) > 0)
    assert per_target["lossless_share"] == [0, 0, 0, 1] and per_target["psnr_db"][3] is None  # 40 bpp: exact file
    assert s["coded"]["lossless_bpd"] * 3 < 40
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

    for mod, name in ((rm, "model_bound"), (rm, "encode"), (rm, "decode_progressive"), (classic, "run_codec"),
                      (classic, "msssim_per_image"), (rt, "encode_within_bpp"), (rt, "decode_progressive")):
        monkeypatch.setattr(mod, name, boom)
    assert report.main(_argv(tmp, "out2")) == 0
    s = json.loads((tmp / "out2" / "summary.json").read_text())
    assert s["cache"]["misses"] == 0 and s["cache"]["hits"] > 0
    a = json.loads((first_run / "results" / "ddpm-progressive-coded.json").read_text())
    b = json.loads((tmp / "out2" / "results" / "ddpm-progressive-coded.json").read_text())
    assert a["results"]["bpp"] == b["results"]["bpp"]


def test_bound_only_run_with_limit_zero(setup, first_run):
    """--limit 0: the bound, split and strip only (e.g. the bound computed on a GPU into the cache), no crash."""
    tmp, _ = setup
    assert report.main(_argv(tmp, "out_bound_only", "--limit", "0")) == 0
    s = json.loads((tmp / "out_bound_only" / "summary.json").read_text())
    assert s["n_images"] == 0 and s["n_bound"] == 2 and s["classic"] == [] and s["lossless_classic"] == []
    assert s["bound_summary"]["n_images"] == 2


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


def test_cli_report_is_a_click_command_with_the_same_options(capsys):
    from cli.main import main
    from eval.report.options import OPTIONS

    res = CliRunner().invoke(main, ["report", "--help"])
    assert res.exit_code == 0 and "report [OPTIONS]" in res.output, res.output
    for decls, _ in OPTIONS:
        assert decls[-1] in res.output, decls
    assert "-h, --help" in res.output and "ms-ssim-rgb" in res.output
    cmd = main.commands["report"]
    assert isinstance(cmd, __import__("click").Command)
    assert report.main(["--help"], prog="python -m eval.report") == 0
    out = capsys.readouterr().out
    assert "Usage: python -m eval.report [OPTIONS]" in out
    assert [o.opts for o in cmd.params if o.opts != ["--help"]] == [list(d) for d, _ in OPTIONS]


@pytest.mark.parametrize("argv, text", [
    (["--limit", "x"], "'x' is not a valid integer"),
    (["--no-such-option"], "No such option"),
    (["--prior", "small"], "'small' is not one of"),
    (["--limit", "-1"], "--limit"),
    (["--images", "/nonexistent/images.npz", "--limit", "1"], "/nonexistent/images.npz"),
])
def test_report_errors_are_one_line_exit_1(argv, text, capsys):
    from cli.main import main

    assert report.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    res = CliRunner().invoke(main, ["report", *argv])
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], res.output


def test_report_command_line_lists_only_changed_options():
    from eval.report.options import command_line

    assert command_line({"limit": 8, "no_classic": True, "out": "docs/report", "quiet": False}) == \
        "python -m eval.report --limit 8 --no-classic"


# ---- HEVC intra through HEIF ----------------------------------------------------------------------------------
def _box(typ: bytes, payload: bytes, large: bool = False) -> bytes:
    if large:
        return (1).to_bytes(4, "big") + typ + (16 + len(payload)).to_bytes(8, "big") + payload
    return (8 + len(payload)).to_bytes(4, "big") + typ + payload


def test_iso_box_parsing_and_payload_size():
    data = _box(b"ftyp", b"heic" * 4) + _box(b"meta", b"\0" * 300) + _box(b"mdat", b"x" * 41)
    assert [(t, s) for t, _, s in classic.iso_boxes(data)] == [(b"ftyp", 24), (b"meta", 308), (b"mdat", 49)]
    assert classic.heif_payload_size(data) == 41
    big = _box(b"ftyp", b"") + _box(b"mdat", b"y" * 10, large=True) + _box(b"mdat", b"z" * 5)
    assert classic.heif_payload_size(big) == 15
    to_end = _box(b"ftyp", b"") + (0).to_bytes(4, "big") + b"mdat" + b"w" * 7
    assert classic.heif_payload_size(to_end) == 7
    for bad in (data[:-3], data + b"\0\0\0", _box(b"ftyp", b"")):
        with pytest.raises(ValueError):
            classic.heif_payload_size(bad)


def test_heif_codecs_sweep_and_count_payload():
    pytest.importorskip("pillow_heif")
    codecs, notes = classic.heif_codecs()
    if not codecs:
        pytest.skip(f"no HEVC encoder: {notes}")
    whole, payload = codecs
    assert (whole.key, payload.key) == ("heif", "hevc_payload") and payload.size is classic.heif_payload_size
    assert {"heif", "hevc_payload"} <= {c.key for c in classic.lossy_codecs()[0]}
    images = _natural_ish(2, seed=5)
    data = whole.encode(images[0], 50)
    assert classic.iso_boxes(data)[0][0] == b"ftyp"
    assert 0 < classic.heif_payload_size(data) < len(data) - 200  # the boxes are hundreds of bytes
    w, p = (classic.sweep(c, images)["points"] for c in (whole, payload))
    for a, b in zip(w, p):
        assert a["psnr_db"] == b["psnr_db"] and b["bytes_total"] < a["bytes_total"]
        assert a["ms_ssim"] is None or 0 < a["ms_ssim"] <= 1
    bpp = np.array([x["bpp"] for x in p])
    assert bpp[-1] > 4 * bpp[0] and p[-1]["psnr_db"] > p[0]["psnr_db"] + 10


def test_heif_skips_cleanly_when_missing(monkeypatch):
    monkeypatch.setattr(classic, "_heif", lambda: None)
    codecs, notes = classic.heif_codecs()
    assert codecs == [] and "pillow-heif" in notes[0]
    lossy, notes = classic.lossy_codecs()
    assert "heif" not in {c.key for c in lossy} and any("pillow-heif" in n for n in notes)


# ---- MS-SSIM of the DDPM curves: the classic codecs' function on the decoded frames --------------------------------
def test_coded_image_msssim_matches_classic_on_decoded_frames(setup):
    pytest.importorskip("torchmetrics")
    from ddpmcodec.codec.progressive import CodecSettings, encode
    from ddpmcodec.codec.decoding import decode_progressive

    _, model = setup
    im = _natural_ish(1, seed=6)[0]
    settings = CodecSettings(n_steps=4, t_end=2, budget_bits=6, margin_bits=2)
    r = rm.coded_image(model, im, settings)
    frames = [f.pixels for f in decode_progressive(encode(im, model, settings).data, model) if f.t > 0]
    want = classic.msssim_per_image(np.stack(frames), np.stack([im] * len(frames)))
    assert r["t"][-1] == 0 and r["ms_ssim"][-1] is None
    np.testing.assert_allclose(r["ms_ssim"][:-1], want, rtol=0, atol=1e-12)
    psnr = classic.psnr_per_image(np.stack(frames), np.stack([im] * len(frames)))
    np.testing.assert_allclose(r["psnr_db"][:-1], psnr, atol=1e-9)


def test_ideal_msssim_uses_the_bounds_draws(setup, tmp_path):
    pytest.importorskip("torchmetrics")
    _, model = setup
    images = _natural_ish(2, seed=7)
    ts = [20, 10, 1]
    ms = rm.ideal_msssim(model, images, 0, ts, Cache(tmp_path))
    assert len(ms) == 3 and all(-1 <= v <= 1 for v in ms) and ms[2] > ms[0]
    # the same draws as the exact bound: the MSE of these x^_0 is the bound's per-t mse_x0_clip
    bound = rm.model_bound(model, images, seed=3)
    x0 = torch.as_tensor(images).permute(0, 3, 1, 2).double() / 127.5 - 1.0
    x0_hat = rm.bound_x0_hat(model, images, ts, seed=3)
    for k, t in enumerate(ts):
        mse = float((x0_hat[:, k] - x0).pow(2).mean())
        assert mse == pytest.approx(bound.per_t["mse_x0_clip"][t - 1], rel=1e-6)
    assert rm.ideal_msssim(model, images[:0], 0, ts, Cache(tmp_path)) is None
    assert rm.ideal_msssim(model, images[:, :16, :16], 0, ts, Cache(tmp_path)) is None


def test_targets_below_the_smallest_file_are_reported_not_fatal(setup, tmp_path):
    """A target no file can meet (the CLI refuses it) is a row without a file; the report goes on (it crashed)."""
    from ddpmcodec.codec.progressive import CodecSettings

    _, model = setup
    images = _natural_ish(2, seed=8)
    settings = CodecSettings(n_steps=4, t_end=2, budget_bits=6, margin_bits=2)
    curve = rt.target_curve(model, images, 0, settings, [0.01, 8.0], Cache(tmp_path / "c"))
    assert curve["images_with_file"] == [0, 2]
    assert math.isnan(curve["bpp"][0]) and curve["ms_ssim"][0] is None and 0 < curve["bpp"][1] <= 8
    rows = rt.target_rows(curve)
    assert "no file: below every image's smallest possible file" in rows[2] and "| 8 |" in rows[3]
    res = rt.target_result(curve, "test")
    assert res["results"]["target-bpp"] == [8.0]
    cached = Cache(tmp_path / "c")  # the refusals are cached like the files
    assert rt.target_curve(model, images, 0, settings, [0.01, 8.0], cached)["images_with_file"] == [0, 2]
    assert cached.misses == 0
