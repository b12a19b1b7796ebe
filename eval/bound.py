"""The DDPM variational bound (bits/dim) of a model on the dev images, as the official calc_bpd_loop.

    python -m eval.bound                                   # bundled model, 500 dev images, all 1000 t (slow on CPU)
    python -m eval.bound --limit 64 --t-samples 50         # Monte-Carlo over t, exact decoder term
    python -m eval.bound --model path/to/weights.safetensors --device cuda --out eval/out
    python -m eval.bound --ray auto                        # the pairs as Ray tasks (= a local one-thread run)

Prints rate / distortion / total / RMSE next to the paper's 1.78 / 1.97 / 3.75 / 0.95 and writes a JSON (summary,
per-t terms, per-t MSE of x^_0, cumulative rate, Table-4 rows) and a PNG plot into --out.
"""
from __future__ import annotations

import argparse
import sys

from ddpmcodec.bound import T_SAMPLINGS, format_report, run_bound
from ddpmcodec.errors import CodecError


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m eval.bound", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="weights spec for load_model (default: bundled model)")
    ap.add_argument("--images", default=None, help="folder or .npz of images (default: the 500 dev test images)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--t-samples", type=int, default=None, help="Monte-Carlo: K random t per image (else all T)")
    ap.add_argument("--t-sampling", choices=T_SAMPLINGS, default="importance", help="how t is drawn (unbiased)")
    ap.add_argument("--batch-size", type=int, default=None, help="(image, t) pairs per call (64 CPU / 1024 CUDA)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="network precision on CUDA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="eval/out", help="output folder for JSON + PNG")
    ap.add_argument("--ray", metavar="ADDRESS", default=None,
                    help='(image, t) pairs as Ray tasks: auto, local or an address (pip install "ddpmcodec[cluster]")')
    ap.add_argument("--ray-batches", type=int, default=16, help="network batches per Ray task")
    ap.add_argument("--allow-pickle", action="store_true", help="allow pickle-based checkpoints (trusted only)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result, paths = run_bound(
            args.model, images=args.images, limit=args.limit, out_dir=args.out, device=args.device,
            allow_pickle=args.allow_pickle, ray=args.ray, ray_batches=args.ray_batches, t_samples=args.t_samples,
            t_sampling=args.t_sampling, seed=args.seed,
            batch_size=args.batch_size or (1024 if args.device.startswith("cuda") else 64),
            precision=args.precision, progress=not args.quiet and sys.stderr.isatty())
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(result.summary()))
    print(f"{result.extra['seconds']:.1f} s; wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
