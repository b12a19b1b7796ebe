"""Regenerate the codec report: ideal vs coded progressive curves, classic codecs, lossless points, the 1.78/1.97 split.

    python -m eval.report                          # bundled model, dev images (defaults sized for a 2-core CPU)
    python -m eval.report --limit 8 --bound-limit 2 --out /tmp/report     # quick look
    python -m eval.report --limit 500 --bound-limit 500 --device cuda     # the full report (GPU)

The command line (click, shared with `ddpmcodec report`) is in eval/report/options.py; this module computes.

Writes into --out (default docs/report): README.md, fig5.png, rd.png, strip.png, results/*.json (CompressAI style),
lossless.json, summary.json. Expensive parts (bound, codec runs, classic sweeps, strip) are cached as JSON/npz under
--cache (default eval/out/cache), keyed by model identity, settings and the exact pixels, so a re-run only redraws.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ddpmcodec.codec.progressive import CodecSettings, default_t_end
from ddpmcodec.errors import InputError
from eval.report import classic
from eval.report import model as rm
from eval.report import plots
from eval.report import targets as rt
from eval.report import write as rw
from ddpmcodec.batch.result_cache import Cache, image_digest
from eval.report.options import BITSBACK_JSON  # noqa: F401  (re-exported)
from eval.report.options import main as _cli_main

BITSBACK_COMMAND = "python -m eval.bitsback_bench"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device} requested but CUDA is not available")
    return device


def read_bitsback(path: str | Path) -> dict:
    """Bits-back lossless results from eval.bitsback_bench (its JSON), or a 'not run' row with the command."""
    p = Path(path)
    row = {"name": "DDPM bits-back (one file for the set)", "bpd": None}
    if not p.is_file():
        return {**row, "status": "not run", "note": f"run `{BITSBACK_COMMAND}` (writes {p})"}
    try:
        r = json.loads(p.read_text())
        m = r["set_run"]
        extra = f"extrapolated to a 500-image file {r['extrapolated_500']['bpd']:.3f}; " if m["images"] < 500 else ""
        note = (f"whole file incl. the initial seed bits, one file for {m['images']} images; net (file − seed) "
                f"{m['net_bpd']:.3f}; {extra}{r['steps']} coded steps; from {p}")
        return {**row, "bpd": float(m["bpd"]), "net_bpd": float(m["net_bpd"]), "n_images": int(m["images"]),
                "note": note}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return {**row, "status": "unreadable", "note": f"{p}: unexpected format ({exc!r}); rerun {BITSBACK_COMMAND}"}


def _log(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


def run(args, command: str) -> dict:
    """Compute (or read from cache) every part, write all outputs; returns the summary dict.

    args: the options of eval/report/options.py as attributes; command: the command line to print in the report."""
    from ddpmcodec.data import load_dev_set, load_images
    from ddpmcodec.network.model_io import load_model

    t_run = time.perf_counter()
    log = _log(args.quiet)
    progress = not args.quiet
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    ray, ref = getattr(args, "ray", None), None
    if ray is not None:  # no Ray or no cluster: one error line before any work
        from ddpmcodec.batch.ray_map import ModelRef
        from ddpmcodec.batch.ray_tasks import connect

        connect(ray)
        ref = ModelRef.of(args.model, device)
    model = load_model(args.model, device=device)
    n_need = max(args.limit, args.bound_limit, args.strip_images, args.split_limit)
    data = load_dev_set() if args.images is None else load_images(args.images)
    data = data[args.offset: args.offset + n_need]
    if len(data) == 0:
        raise InputError("no images selected (check --offset / --limit)")
    images, bound_images = data[:args.limit], data[:args.bound_limit]
    src = "CIFAR-10 dev test set" if args.images is None else str(args.images)
    images_desc = f"{src}, images {args.offset}..{args.offset + len(images) - 1}"
    cache = Cache(args.cache, enabled=not args.no_cache)
    settings = CodecSettings(n_steps=args.steps, t_end=args.t_end or default_t_end(model), budget_bits=args.budget,
                             margin_bits=args.margin, seed=args.seed, prior=args.prior)
    stage = {}
    s = {"model": model.name, "model_identity": model.identity, "images_desc": images_desc, "offset": args.offset,
         "n_images": len(images), "n_bound": len(bound_images), "n_strip": min(args.strip_images, len(data)),
         "T": model.diffusion.T, "settings": asdict(settings), "device": device, "threads": torch.get_num_threads(),
         "msssim": classic.msssim_description()}

    ideal = None
    if len(bound_images):
        log(f"[1/5] exact bound on {len(bound_images)} images")
        batch = args.bound_batch or (1024 if device.startswith("cuda") else 64)
        result, stage["bound"] = rm.bound_exact(model, bound_images, args.offset, cache, seed=args.bound_seed,
                                                batch_size=batch, progress=progress, ray=ray, ref=ref)
        ideal = rm.ideal_curve(result)
        s["bound_summary"] = result.summary()
        s["table4_ours"] = result.table4()
        ideal["msssim_t"] = rw.ideal_points(model.diffusion.T)
        ideal["ms_ssim"] = rm.ideal_msssim(model, bound_images, args.offset, ideal["msssim_t"], cache,
                                           seed=args.bound_seed, batch_size=batch, progress=progress, ray=ray,
                                           ref=ref)
    s["ideal"] = ideal
    split_images = data[:args.split_limit]
    s["n_split"] = len(split_images)
    if len(split_images):
        log(f"[1/5] Monte-Carlo bound ({args.split_t_samples} t/image) on {len(split_images)} images")
        batch = args.bound_batch or (1024 if device.startswith("cuda") else 64)
        split, stage["split"] = rm.bound_exact(model, split_images, args.offset, cache, seed=args.bound_seed,
                                               batch_size=batch, t_samples=args.split_t_samples, chunk=50,
                                               progress=progress, ray=ray, ref=ref)
        s["split_summary"] = split.summary()

    coded = None
    if len(images):
        log(f"[2/5] progressive codec on {len(images)} images")
        per_image = rm.coded_per_image(model, images, args.offset, settings, cache, progress=progress, ray=ray,
                                       ref=ref)
        coded = rm.coded_curve(per_image, int(images[0].size))
        stage["codec"] = float(np.nansum([p["encode_s"] + p["decode_s"] for p in per_image]))
    s["coded"] = coded
    try:
        targets = [float(x) for x in args.targets.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--targets must be comma-separated numbers, got {args.targets!r}") from None
    if any(not 0 < t <= 64 for t in targets):
        raise InputError("--targets must lie in (0, 64] bpp")
    per_target = None
    if targets and len(images):
        log(f"[2/5] the files --target-bpp writes, {len(targets)} targets on {len(images)} images")
        per_target = rt.target_curve(model, images, args.offset, replace(settings, t_end=args.t_end), targets, cache,
                                     progress=progress, ray=ray, ref=ref)
        stage["targets"] = float(np.nansum(np.array(per_target["images_with_file"])
                                           * (np.array(per_target["encode_s"]) + np.array(per_target["decode_s"]))))
    s["targets"] = per_target

    log(f"[3/5] classic codecs on {len(images)} images")
    lossy, notes = ([], ["classic codecs skipped (--no-classic)"]) if args.no_classic else classic.lossy_codecs()
    lossless, ll_notes = classic.lossless_codecs()
    s["notes"] = notes + ll_notes
    s["classic"], s["lossless_classic"], stage["classic"] = [], [], 0.0
    versions = classic.library_versions()
    for codec in tqdm(lossy + lossless if len(images) else [], desc="classic codecs", unit="codec",
                      disable=not progress):
        exact = codec in lossless
        key = {"codec": codec.key, "qualities": list(codec.qualities), "setting": codec.setting,
               "images": image_digest(images), "versions": versions, "exact": exact,
               "msssim": classic.MSSSIM_OPTIONS}
        res = cache.get_json("classic", key)
        if res is None:
            start = time.perf_counter()
            res = classic.sweep(codec, images, exact=exact)
            res["seconds"] = time.perf_counter() - start
            cache.put_json("classic", key, res)
        stage["classic"] += res["seconds"]
        (s["lossless_classic"] if exact else s["classic"]).append(res)

    log("[4/5] lossless points and progressive strip")
    s["lossless"] = [{"name": "DDPM ideal: bound total (NLL)", "bpd": s["bound_summary"]["total_bpd"],
                      "n_images": len(bound_images), "note": "rate + distortion of the exact bound, no file"}
                     ] if ideal is not None else []
    if coded is not None:
        s["lossless"] += [
            {"name": "DDPM progressive-to-lossless (ideal)", "bpd": coded["lossless_ideal_bpd"],
             "n_images": len(images), "note": "ΣKL of the coded steps + code length of the x_0 layer, no file"},
            {"name": "DDPM progressive-to-lossless (coded)", "bpd": coded["lossless_bpd"], "n_images": len(images),
             "note": f"whole .ddpm file per image (± {coded['lossless_bpd_stderr']:.3f} s.e.), decoded bit-exact"}]
    s["lossless"].append(read_bitsback(args.bitsback_json))
    for r in s["lossless_classic"]:
        p = r["points"][0]
        s["lossless"].append({"name": r["name"], "bpd": p["bpd"], "n_images": r["n_images"],
                              "note": f"whole file, {r['setting']}; decoded bit-exact"})
    strip = None
    if args.strip_images > 0:
        try:
            want = [int(x) for x in args.strip_t.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--strip-t must be comma-separated integers, got {args.strip_t!r}") from None
        strip = rm.strip_frames(model, data[:args.strip_images], settings, want, cache)
        stage["strip"] = float(strip["seconds"])
    s["strip"] = None if strip is None else {"t": strip["t"].tolist(), "bytes": strip["bytes"].tolist()}

    log("[5/5] writing outputs")
    out = Path(args.out)
    res_dir = out / "results"
    rd = [rw.classic_result(c, images_desc) for c in s["classic"]]
    if coded is not None:
        real, chain = rw.coded_results(coded, asdict(settings), images_desc)
        rd = [real, chain] + rd
    if per_target is not None:
        rd.insert(0, rt.target_result(per_target, images_desc))
    if ideal is not None:
        bound_desc = f"{src}, images {args.offset}..{args.offset + len(bound_images) - 1}"
        rd.append(rw.ideal_bound_result(ideal, len(bound_images), bound_desc, ideal.get("ms_ssim")))
    s["rd_results"] = rd
    for r in rd:
        rw.write_json(res_dir / f"{_slug(r['name'])}.json", r)
    rw.write_json(out / "lossless.json", s["lossless"])
    plots.fig5(ideal, coded, out / "fig5.png", n_bound=len(bound_images), n_coded=len(images), T=s["T"])
    plots.rd_curves(s["classic"], ideal, coded, out / "rd.png", n_bound=len(bound_images),
                    literature=not args.no_literature, targets=per_target)
    if strip is not None:
        plots.strip(strip, out / "strip.png")
    s["stage_seconds"] = {k: round(v, 1) for k, v in stage.items()}
    s["wall_s"] = time.perf_counter() - t_run
    s["cache"] = {"hits": cache.hits, "misses": cache.misses, "folder": str(args.cache)}
    s["command"] = command
    s["full_command"] = ("python -m eval.report --limit 500 --bound-limit 500 --split-t-samples 100 --device cuda"
                         + (f" --out {shlex.quote(args.out)}" if args.out != "docs/report" else ""))
    (out / "README.md").write_text(rw.markdown(s))
    slim = {k: v for k, v in s.items() if k not in ("ideal", "rd_results")}
    slim["ideal_table4"] = s.get("table4_ours")
    rw.write_json(out / "summary.json", json.loads(json.dumps(slim, default=_plain)))
    log(f"wrote {out}/README.md and figures in {s['wall_s']:.0f} s (cache: {cache.hits} hits, {cache.misses} misses)")
    return s


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def _plain(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def main(argv: list[str] | None = None, prog: str = "python -m eval.report") -> int:
    """``python -m eval.report``: the click command of eval/report/options.py (same as ``ddpmcodec report``)."""
    return _cli_main(argv, prog)


if __name__ == "__main__":
    sys.exit(main())
