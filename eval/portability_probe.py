"""Probe: do lossless files decode exactly when the decoder's CPU kernels differ from the encoder's?

    python -m eval.portability_probe --offset 4 --limit 4 --out eval/out/portability_probe.json

Encodes images in this process (the machine's own kernels), then decodes every file in a fresh process per setting:
torch's CPU kernels chosen by environment variables read at start (ATEN_CPU_CAPABILITY for torch's own vectorised
kernels, ONEDNN_MAX_CPU_ISA for oneDNN's convolutions), which stands in for another machine with the same torch
build. Per setting: the network's numerics digest, files decoded exactly / refused by the checksum / wrong (must be
0), how far x_{t_end} and x^_0 at t_end drifted from the native decode, and how many of each image's x_0-layer
inputs (both on grids of about 2^-10) that drift changed: any one of them breaks the exact layer. Images: lossless training originals from
../shared unless --images. --exact-network encodes `--portable` files (the U-Net on integer grids), which must decode
exactly under every setting.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

SETTINGS = {  # name -> environment of the decoding process
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}


def decode_worker(folder: Path, model_spec: str) -> None:
    """In a decoding process: decode every folder/*.ddpm, write folder/<setting>.npz and .json (status per file)."""
    from ddpmcodec.codec.decoding import decode_progressive
    from ddpmcodec.errors import DeterminismError
    from ddpmcodec.network.model_io import load_model
    from eval.preview_probe import recorded_previews

    torch.set_num_threads(1)
    model = load_model(model_spec)
    name = os.environ.get("PORTABILITY_SETTING", "native")
    status, arrays = [], {}
    with recorded_previews() as previews:
        for k, path in enumerate(sorted(folder.glob("*.ddpm"))):
            pixels = np.load(path.with_suffix(".npy"))
            try:
                out = list(decode_progressive(path.read_bytes(), model, every_step=False))[-1].pixels
                status.append("exact" if np.array_equal(out, pixels) else "wrong")
            except DeterminismError:
                status.append("refused")
            _, x_t, x0 = previews[-1]  # the chain at t_end, what the exact x_0 layer reads
            arrays[f"x_t_{k}"], arrays[f"x0_{k}"] = x_t.numpy(), x0.numpy()
            previews.clear()
    np.savez(folder / f"{name}.npz", **arrays)
    (folder / f"{name}.json").write_text(json.dumps({"status": status, "digest": model.numerics_digest(),
                                                     "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


def run(images: np.ndarray, model_spec: str, settings: dict[str, dict], settings_kwargs: dict | None = None) -> dict:
    from ddpmcodec.codec.progressive import CodecSettings, encode
    from ddpmcodec.network.model_io import load_model

    torch.set_num_threads(1)
    model = load_model(model_spec)
    result: dict = {"images": len(images), "encoder_digest": model.numerics_digest(),
                    "codec_settings": settings_kwargs or {}, "settings": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for k, im in enumerate(images):
            (folder / f"{k:04d}.ddpm").write_bytes(encode(im, model, CodecSettings(**(settings_kwargs or {}))).data)
            np.save(folder / f"{k:04d}.npy", im)
        root = Path(__file__).resolve().parents[1]
        for name, env in {"native": {}, **settings}.items():
            cmd = [sys.executable, "-m", "eval.portability_probe", "--decode-worker", str(folder), "--model", model_spec]
            proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True,
                                  env={**os.environ, **env, "PORTABILITY_SETTING": name})
            if proc.returncode != 0:
                result["settings"][name] = {"env": env, "error": proc.stderr.strip().splitlines()[-1:]}
                continue
            info = json.loads((folder / f"{name}.json").read_text())
            result["settings"][name] = {"env": env, **info, **{s: info["status"].count(s)
                                                                for s in ("exact", "refused", "wrong")}}
        native = np.load(folder / "native.npz")
        for name, row in result["settings"].items():
            if name == "native" or "error" in row:
                continue
            other = np.load(folder / f"{name}.npz")
            for key in ("x_t", "x0"):
                drift = np.concatenate([np.abs(native[f"{key}_{k}"] - other[f"{key}_{k}"]).ravel()
                                        for k in range(len(images))])
                row[f"{key}_drift_max"], row[f"{key}_drift_median"] = float(drift.max()), float(np.median(drift))
            row["layer_inputs_changed_per_image"] = [
                _layer_inputs_changed(native, other, k, im.shape[0], im.shape[1]) for k, im in enumerate(images)]
    return result


def _layer_inputs_changed(native, other, k: int, height: int, width: int) -> int:
    """How many of image k's x_0-layer inputs (x_{t_end} on its 2^-10 grid, x^_0's mean rows on 1/8 grey level;
    2 x 3 x H x W values) differ between two decodes: any one of them breaks the exact layer."""
    from ddpmcodec.entropy.pixelmodel import mean_rows
    from ddpmcodec.entropy.x0net.layout import quantize_x_t

    changed = 0
    for key, grid in (("x_t", quantize_x_t), ("x0", lambda x: torch.from_numpy(mean_rows(x, height, width)))):
        a, b = (grid(torch.from_numpy(d[f"{key}_{k}"])) for d in (native, other))
        changed += int((a != b).sum())
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.portability_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--images", default=None, help=".npz of images (default: ../shared's lossless training originals)")
    ap.add_argument("--offset", type=int, default=4)
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--model", default="default")
    ap.add_argument("--settings", nargs="*", default=["avx2", "generic"], choices=sorted(set(SETTINGS) - {"native"}))
    ap.add_argument("--exact-network", action="store_true",
                    help="encode with the U-Net on integer grids (the codec's --portable files)")
    ap.add_argument("--out", type=Path, default=Path("eval/out/portability_probe.json"))
    ap.add_argument("--decode-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decode_worker is not None:
        decode_worker(args.decode_worker, args.model)
        return 0
    from ddpmcodec.data import probe_images
    from ddpmcodec.errors import InputError

    try:
        images = probe_images(args.images, args.offset, args.limit)
    except InputError as exc:  # no ../shared: say so and stop
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    result = run(images, args.model, {name: SETTINGS[name] for name in args.settings},
                 {"exact_network": True} if args.exact_network else None)
    result["command"] = "python -m eval.portability_probe " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({n: {k: r.get(k) for k in ("exact", "refused", "wrong", "digest")}
                      for n, r in result["settings"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
