"""The prepared GPU check: one script, one JSON, within 8 minutes on one H100/H200.

    python -m eval.gpu_check --device cuda --out eval/out/gpu_check.json          # on a machine with a GPU
    python -m eval.gpu_check --dry-run --out /tmp/gpu_check.json                  # the same path on the CPU, tiny

What it measures, in order (each part is timed and recorded; a part that fails is recorded with its error and the
script goes on):
1. device facts and the counter-based generator's known answers on the device (candidates must be bit-identical);
2. the channel on the device against the CPU: chosen candidates rebuilt on both must be equal to the last bit,
   and the indices the search picks (float scores may differ in the last digit, so a rare different pick is allowed
   and counted);
3. encode and decode of N dev images with the model on the device: images/s, every lossless file checked;
4. the largest chunk budget that keeps encode <= 1 s/image on the device (budgets 18..20 on a few images);
5. cross-device decoding: files encoded on the device decoded on the CPU: lossy stops must decode (PSNR against the
   original is reported), lossless must decode bit-exact or fail with the checksum error, never a wrong image; and
   the same images encoded with --portable (the network on integer grids) must decode bit-exact on the CPU;
6. pooling (batch.lockstep): whether a sample's output in a fixed-shape call is independent of its batch mates and
   position, seconds per network call by batch size, and a lockstep encode in this process (files against part 3's);
   then batch coding on the device (`encode_many` / `decode_many`, once per --batch-workers value, processes
   sharing the device, each coding shards in lockstep): images/s against part 3's single-image path, every file
   byte-identical to part 3's and every decode bit-exact;
7. the test suite's device-relevant tests (--tests), run on the device machine with its torch build;
8. a probe for issue 10's lever 1 that a GPU makes cheap (--probe-images): chunk budget and margin pairs within
   format 7's 2^20 candidates, each on the same images: encode s/image, lossless bits/dim, and PSNR of the best
   prefix within 0.5 / 1 / 2 bpp, counted as whole files and as coded steps alone (stream bits; a non-default margin
   costs header bytes today, the stream column shows what the channel simulation itself gains).
Part 3 stops adding images after --max-seconds, so the whole check fits its time on slower devices too.
The dry run uses a tiny random model and generated images on the CPU, so the test suite exercises parts 1-6.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ddpmcodec.channel import pfr, pfr_windows
from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.codec.decoding import decode_progressive
from ddpmcodec.errors import DeterminismError
from ddpmcodec.images import psnr


def _write(results: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=lambda v: None if isinstance(v, float) and math.isnan(v)
                              else str(v)))


def _part(results: dict, name: str, fn, out: Path) -> None:
    """Runs one part, records its result or error and its time, and rewrites the JSON (a killed run keeps it)."""
    start = time.perf_counter()
    try:
        results[name] = {"ok": True, **fn()}
    except Exception as exc:  # a failed part is a finding, not the end of the check
        results[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc(limit=4)}
    results[name]["seconds"] = round(time.perf_counter() - start, 3)
    print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'} ({results[name]['seconds']} s)", file=sys.stderr)
    _write({k: ({a: b for a, b in v.items() if a != "_files"} if isinstance(v, dict) else v)
            for k, v in results.items()}, out)


def _device_facts(device: str) -> dict:
    pfr.check_candidate_generator(device)
    facts = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        facts["name"] = torch.cuda.get_device_name(torch.device(device))
    return facts


def _channel_parity(device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    picks_differ, rebuilt_equal, chunks = 0, True, 0
    for n_dims, n_chunks, ratio in ((3072, 8, 1.05), (3072, 60, 1.3), (12288, 300, 1.5)):
        layout = pfr.ChunkLayout.make(n_dims, n_chunks, seed=n_chunks)
        delta = torch.randn(n_dims, generator=gen) * 0.4
        for select, rebuild, n in ((pfr.pfr_select, pfr.pfr_reconstruct, 4096),  # format 4
                                   (pfr_windows.window_select, pfr_windows.window_reconstruct, 1 << 18)):  # format 5
            cpu = select(7, layout, delta, ratio, n)
            dev = select(7, layout, delta.to(device), ratio, n).cpu()
            picks_differ += int((cpu != dev).sum())
            chunks += layout.n_chunks
            rebuilt_equal &= torch.equal(rebuild(7, layout, cpu), rebuild(7, layout, cpu.to(device)).cpu())
    if not rebuilt_equal:
        raise AssertionError("candidates rebuilt on the device differ from the CPU's")
    return {"chunks": chunks, "picks_that_differ": picks_differ, "rebuilt_bit_identical": rebuilt_equal}


def _throughput(model, images: np.ndarray, settings: CodecSettings, max_seconds: float) -> dict:
    enc_s, dec_s, sizes = 0.0, 0.0, []
    files = []
    for im in images:
        if enc_s + dec_s > max_seconds:
            break
        start = time.perf_counter()
        res = encode(im, model, settings)
        enc_s += time.perf_counter() - start
        start = time.perf_counter()
        out = list(decode_progressive(res.data, model, every_step=False))[-1]
        dec_s += time.perf_counter() - start
        if not np.array_equal(out.pixels, im):
            raise AssertionError("a lossless round trip on the device failed")
        sizes.append(len(res.data))
        files.append(res.data)
    n, dims = len(files), images[0].size
    return {"images": n, "images_offered": len(images), "max_seconds": max_seconds,
            "encode_images_per_s": n / enc_s, "decode_images_per_s": n / dec_s,
            "encode_s_per_image": enc_s / n, "decode_s_per_image": dec_s / n,
            "lossless_bits_per_dim": 8 * float(np.mean(sizes)) / dims, "_files": files}


def _largest_budget(model, images: np.ndarray, budgets, limit_s: float) -> dict:
    rows, best = [], None
    for b in budgets:
        start = time.perf_counter()
        sizes = [len(encode(im, model, CodecSettings(budget_bits=b)).data) for im in images]
        per = (time.perf_counter() - start) / len(images)
        rows.append({"budget_bits": b, "encode_s_per_image": per,
                     "lossless_bits_per_dim": 8 * float(np.mean(sizes)) / images[0].size})
        if per <= limit_s:
            best = b
        else:
            break
    return {"largest_budget_within_limit": best, "limit_s": limit_s, "rows": rows}


def _cross_device(model, files: list[bytes], images: np.ndarray, device: str, settings: CodecSettings) -> dict:
    lossy_psnr, exact, checksum_refusals = [], 0, 0
    device_digest = model.numerics_digest()
    start = time.perf_counter()
    portable = [encode(im, model, replace(settings, exact_network=True)).data for im in images[:len(files)]]
    portable_s = time.perf_counter() - start
    cpu_model = model.to("cpu")
    try:
        cpu_digest = cpu_model.numerics_digest()
        for data, im in zip(files, images):
            steps = list(decode_progressive(data, cpu_model, stop_at_t=50, every_step=False))
            lossy_psnr.append(psnr(steps[-1].pixels, im))
            try:
                out = list(decode_progressive(data, cpu_model, every_step=False))[-1]
            except DeterminismError:
                checksum_refusals += 1
                continue
            if not np.array_equal(out.pixels, im):
                raise AssertionError("a cross-device lossless decode returned a wrong image")
            exact += 1
        portable_exact = 0
        for data, im in zip(portable, images):  # --portable files: the network on integer grids, exact everywhere
            out = list(decode_progressive(data, cpu_model, every_step=False))[-1]
            if out.t != 0 or not np.array_equal(out.pixels, im):
                raise AssertionError("a portable file encoded on the device did not decode exactly on the CPU")
            portable_exact += 1
    finally:
        model.to(device)
    return {"files": len(files), "lossless_exact": exact, "lossless_refused_by_checksum": checksum_refusals,
            "numerics_digest": {"device": device_digest, "cpu": cpu_digest},
            "lossy_stop_t50_psnr_db": float(np.mean(lossy_psnr)),
            "portable_files": len(portable), "portable_exact_on_cpu": portable_exact,
            "portable_encode_s_per_image": portable_s / max(1, len(portable))}


def _batch_throughput(model_spec: str, images: np.ndarray, settings: CodecSettings, device: str, workers: int,
                      single: dict, files: list[bytes], tmp: Path) -> dict:
    """encode_many / decode_many over the images; files (part 3's, a prefix of the images) are compared byte for
    byte, and single (part 3's result) gives the single-image rates."""
    from ddpmcodec.batch import decode_many, encode_many
    from ddpmcodec.images import load_image

    if not files:
        raise RuntimeError("part 3 (throughput) coded no images to compare with")
    tmp.mkdir(parents=True, exist_ok=True)
    src = tmp / "batch.npz"
    np.savez(src, images=images)
    enc = encode_many([src], model_spec, settings, out_dir=tmp / "enc", workers=workers, device=device)
    coded = [Path(r.output).read_bytes() if r.status == "done" else None for r in enc.results]
    dec = decode_many([tmp / "enc"], model_spec, out_dir=tmp / "dec", workers=workers, device=device)
    if enc.failed or dec.failed:
        raise AssertionError(f"batch failures: {(enc.failures + dec.failures)[:3]}")
    exact = sum(np.array_equal(load_image(r.output).pixels, im) for r, im in zip(dec.results, images))
    identical = sum(a == b for a, b in zip(coded, files))
    if identical != len(files) or exact != len(images):
        raise AssertionError(f"{identical}/{len(files)} batch files equal the single-image ones, "
                             f"{exact}/{len(images)} batch decodes bit-exact")
    n = len(images)
    single_s_per_image = 1 / single["encode_images_per_s"] + 1 / single["decode_images_per_s"]
    return {"images": n, "workers": workers, "encode_images_per_s": n / enc.seconds,
            "decode_images_per_s": n / dec.seconds, "encode_plus_decode_images_per_s": n / (enc.seconds + dec.seconds),
            "files_compared_with_single_image": len(files), "files_identical_to_single_image": identical,
            "decodes_bit_exact": exact,
            "speedup_vs_single_image": single_s_per_image / ((enc.seconds + dec.seconds) / n),
            "lossless_bits_per_dim": 8 * enc.total_bytes / (n * images[0].size)}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _pooling(model, images: np.ndarray, settings: CodecSettings, device: str, files: list[bytes]) -> dict:
    """What batch.lockstep relies on and what it buys: (a) a sample's output in a fixed-shape call does not depend
    on the samples beside it or its position; (b) seconds per network call by batch size; (c) images[:n] encoded
    in lockstep in this process, files compared with part 3's single-image files."""
    from ddpmcodec.batch.lockstep import run_lockstep
    from ddpmcodec.channel import counter_rng
    from ddpmcodec.diffusion import net_timestep
    from ddpmcodec.network.device_calls import device_numerics
    from ddpmcodec.network.model_io import DEVICE_GROUP
    from eval.gpu_numerics_probe import independence, timed_call

    c, r = model.unet_config.in_channels, model.unet_config.resolution
    g = DEVICE_GROUP
    x = counter_rng.normals(7, 0, 3 * g * c * r * r, device=device).reshape(3 * g, c, r, r)
    placements = independence(model, x, g, call=model.eps_device_groups)
    with device_numerics(), torch.inference_mode():
        eager = model.net(x[:g], net_timestep(500, g).to(device))
    fixed = model.eps_device_groups(x[:g], 500)
    sync = functools.partial(_sync, device)
    fixed_call_s = timed_call(lambda: model.eps_device_groups(x[:g], 500), sync, repeats=5)
    call_s = {}
    for n in (1, 8, 32, 64, 128, 256):
        xb = x[:n] if n <= len(x) else x.repeat(-(-n // len(x)), 1, 1, 1)[:n]
        call_s[str(n)] = timed_call(lambda: model.eps(xb, 500), sync, repeats=5)
    start = time.perf_counter()
    coded, stats = run_lockstep(list(images), lambda im, net: encode(im, net, settings).data, model)
    wall = time.perf_counter() - start
    identical = sum(a == b for a, b in zip(coded, files))
    return {"device_group": g, "outputs_independent_of_batch_mates": placements["all_bit_identical"],
            "placements_checked": len(placements["rows"]),
            "fixed_call_equals_eager": bool(torch.equal(fixed, eager)), "fixed_call_seconds": fixed_call_s,
            "eager_seconds_per_call_by_batch": call_s, "lockstep_images": len(images),
            "lockstep_encode_images_per_s": len(images) / wall, "network_seconds": round(stats.seconds, 2),
            "requests": stats.requests, "flushes": stats.flushes,
            "mean_requests_per_flush": stats.requests / max(1, stats.flushes),
            "files_compared_with_single_image": min(len(files), len(coded)), "files_identical": identical}


def _margin_probe(model, images: np.ndarray, base: CodecSettings, pairs, bpps=(0.5, 1.0, 2.0)) -> dict:
    """Per (budget, margin): encode s/image, lossless bits/dim and the mean PSNR of the best stop within each bpp,
    whole file (bytes_if_stopped) and steps alone (stream_bits)."""
    pixels, dims = images[0].shape[0] * images[0].shape[1], images[0].size
    rows = []
    for budget, margin in pairs:
        settings = replace(base, budget_bits=budget, margin_bits=margin)
        start = time.perf_counter()
        results = [encode(im, model, settings) for im in images]
        row = {"budget_bits": budget, "margin_bits": margin,
               "encode_s_per_image": (time.perf_counter() - start) / len(images),
               "lossless_bits_per_dim": 8 * float(np.mean([len(r.data) for r in results])) / dims}
        for bpp in bpps:
            for name, size in (("whole_file", lambda st: 8 * st.bytes_if_stopped),
                               ("stream", lambda st: st.stream_bits)):
                best = [max((st.psnr for st in r.steps if st.t > 0 and size(st) <= bpp * pixels), default=math.nan)
                        for r in results]
                mean = float(np.mean(best))
                row[f"psnr_db_within_{bpp:g}bpp_{name}"] = mean if math.isfinite(mean) else None  # None: no stop fits
        rows.append(row)
    return {"images": len(images), "rows": rows}


def _device_tests(tests: list[str], device: str, timeout_s: float) -> dict:
    """Runs the given test files with pytest in a subprocess (DDPMCODEC_TEST_DEVICE names the device)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    env = {**os.environ, "DDPMCODEC_TEST_DEVICE": device}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0:
        raise AssertionError(f"pytest exit {proc.returncode}: {' | '.join(lines[-6:])}")
    return {"tests": tests, "summary": lines[-1] if lines else ""}


def _load(dry_run: bool, device: str, n_images: int, tmp: Path):
    """(model on the device, its spec for load_model, images (N, H, W, 3) uint8)."""
    if dry_run:
        from ddpmcodec.testing import make_tiny_model, smooth_image

        model = make_tiny_model(tmp, resolution=8, seed=0).to(device)
        return model, str(tmp / "tiny-r8-s0.safetensors"), np.stack([smooth_image(8, 8, seed=i)
                                                                       for i in range(n_images)])
    from ddpmcodec.data import load_dev_set
    from ddpmcodec.network.model_io import load_model

    return load_model("default", device=device), "default", load_dev_set(n_images)


def run(device: str, n_images: int, dry_run: bool, out: Path, budget_images: int, limit_s: float,
        max_seconds: float = 180.0, batch_images: int = 64, batch_workers=(4,), tests: list[str] = (),
        probe_images: int = 0, skip=()) -> dict:
    results: dict = {"command": "python -m eval.gpu_check " + " ".join(sys.argv[1:]), "dry_run": dry_run}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model, model_spec, images = _load(dry_run, device, n_images, Path(tmp))
        fast = CodecSettings(n_steps=8, budget_bits=6) if dry_run else CodecSettings()
        _part(results, "device", lambda: _device_facts(device), out)
        if "channel_parity" not in skip:
            _part(results, "channel_parity", lambda: _channel_parity(device), out)
        if tests:
            _part(results, "device_tests", lambda: _device_tests(list(tests), device, timeout_s=240), out)
        if probe_images:
            pairs = ((6, 0), (4, 2)) if dry_run else ((18, 0), (18, 2), (16, 4), (20, 0))
            _part(results, "margin_probe", lambda: _margin_probe(model, images[:probe_images], fast, pairs), out)
        _part(results, "throughput", lambda: _throughput(model, images, fast, max_seconds), out)
        files = results["throughput"].pop("_files", [])
        budgets = (4, 5) if dry_run else (18, 19, 20)
        if "pooling" not in skip:
            _part(results, "pooling", lambda: _pooling(model, images[:batch_images], fast, device, files), out)
        if "largest_budget" not in skip:
            _part(results, "largest_budget", lambda: _largest_budget(model, images[:budget_images], budgets,
                                                                     limit_s), out)
        if "cross_device" not in skip:
            _part(results, "cross_device", lambda: _cross_device(model, files[:budget_images], images, device, fast),
                  out)
        for w in batch_workers:
            _part(results, f"batch_workers_{w}", lambda: _batch_throughput(
                model_spec, images[:batch_images], fast, device, w, results["throughput"], files[:batch_images],
                Path(tmp) / f"w{w}"), out)
    results["total_seconds"] = round(time.perf_counter() - start, 1)
    _write(results, out)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--images", type=int, default=256, help="dev images encoded and decoded on the device")
    ap.add_argument("--budget-images", type=int, default=8, help="images per budget in the budget search")
    ap.add_argument("--limit-s", type=float, default=1.0, help="encode seconds per image the budget must keep")
    ap.add_argument("--max-seconds", type=float, default=180.0,
                    help="part 3 codes no further image once encode + decode have taken this long")
    ap.add_argument("--batch-images", type=int, default=64,
                    help="images coded by encode_many (those part 3 also coded are compared byte for byte)")
    ap.add_argument("--batch-workers", type=int, nargs="+", default=[4],
                    help="worker processes sharing the device in part 6 (one batch run per value)")
    ap.add_argument("--skip", nargs="*", default=[],
                    choices=["channel_parity", "pooling", "largest_budget", "cross_device"],
                    help="parts not run")
    ap.add_argument("--tests", nargs="*", default=[], help="test files run with pytest on this machine (part 7)")
    ap.add_argument("--probe-images", type=int, default=0, help="images of the budget/margin probe (part 8; 0 skips)")
    ap.add_argument("--dry-run", action="store_true", help="tiny model and generated images on the CPU")
    ap.add_argument("--out", type=Path, default=Path("eval/out/gpu_check.json"))
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.images, args.budget_images = "cpu", min(args.images, 2), min(args.budget_images, 2)
        args.batch_workers = [min(w, 2) for w in args.batch_workers]
        args.probe_images = min(args.probe_images, 2)
    elif args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (use --dry-run on a CPU)", file=sys.stderr)
        return 1
    results = run(args.device, args.images, args.dry_run, args.out, args.budget_images, args.limit_s,
                  args.max_seconds, args.batch_images, args.batch_workers, args.tests, args.probe_images, args.skip)
    print(json.dumps({k: v.get("ok") if isinstance(v, dict) else v for k, v in results.items()}), file=sys.stderr)
    return 0 if all(v.get("ok", True) for v in results.values() if isinstance(v, dict)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
