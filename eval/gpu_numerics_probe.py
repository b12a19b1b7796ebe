"""Which device settings make a U-Net call's per-sample outputs independent of the samples beside it, and what a
CUDA graph of the call costs against eager calls (the measurements behind network.device_calls).

    python -m eval.gpu_numerics_probe --device cuda --out eval/out/gpu_numerics_probe.json

For each setting (torch's defaults, deterministic cuDNN, TF32 off, cuDNN off) one sample is evaluated alone in a
DEVICE_GROUP-sample call (zeros beside it) and at positions 0, 5 and DEVICE_GROUP-1 among other samples, at
t = 3, 300 and T: bit-identical or the largest difference; the same under the codec's numerics for smaller calls
(--groups). On CUDA, then: one call captured as a CUDA graph against the eager call (bit-identical? seconds per call)
for 1, each of --groups and DEVICE_GROUP samples. On a CPU only the first part runs
(the flags are CUDA's; it checks the script)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ddpmcodec.channel import counter_rng
from ddpmcodec.diffusion import net_timestep
from ddpmcodec.network.model_io import DEVICE_GROUP, load_model


def _eps(model, x: torch.Tensor, t: int, group: int) -> torch.Tensor:
    """Eager network call on one batch padded to `group` samples, under the current global flags."""
    g = torch.cat([x, x.new_zeros((group - len(x), *x.shape[1:]))]) if len(x) < group else x
    with torch.inference_mode():
        return model.net(g, net_timestep(t, group).to(model.device))[:len(x)]


def independence(model, x: torch.Tensor, group: int = DEVICE_GROUP, call=None) -> dict:
    """One sample alone against the same sample among others at three positions, three t; calls of `group`
    samples (x holds at least 3 * group). call(x, t): the network call to test (default: an eager call padded to
    `group` under the current global flags; eval.gpu_check passes the codec's DiffusionModel.eps_device_groups)."""
    g, rows = group, []
    call = call or (lambda xs, t: _eps(model, xs, t, g))
    for t in (3, 300, model.diffusion.T):
        alone = call(x[:1], t)[0]
        for pos in (0, 5 % g, g - 1):
            mixed = call(torch.cat([x[g:g + pos], x[:1], x[2 * g:3 * g - pos - 1]]), t)[pos]
            rows.append({"t": t, "position": pos, "bit_identical": bool(torch.equal(mixed, alone)),
                         "max_abs_diff": float((mixed - alone).abs().max())})
    return {"all_bit_identical": all(r["bit_identical"] for r in rows), "rows": rows}


def timed_call(fn, sync, repeats: int = 30) -> float:
    """Seconds per fn() call after one warm-up call; sync() before each clock reading (a CUDA synchronize)."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def graph_vs_eager(model, x: torch.Tensor, n: int) -> dict:
    """A CUDA graph of an n-sample call against the eager call: bit-identical outputs? seconds per call."""
    from ddpmcodec.network.device_calls import FixedShapeCalls

    calls = FixedShapeCalls(model.net, model.device)
    steps = net_timestep(300, n).to(model.device)
    graphed = calls(x[:n], steps)
    with torch.inference_mode():
        eager = model.net(x[:n], steps)
    sync = torch.cuda.synchronize
    return {"samples": n, "bit_identical": bool(torch.equal(graphed, eager)),
            "graph_s": timed_call(lambda: calls(x[:n], steps), sync),
            "eager_s": timed_call(lambda: calls.net(x[:n], steps), sync)}


def run(model_spec: str, device: str, groups=(8, 16)) -> dict:
    """The flag comparison at DEVICE_GROUP; then, under the codec's numerics (device_calls), independence at the
    other call sizes in `groups` and, on CUDA, graph against eager timings at 1, each of `groups` and
    DEVICE_GROUP samples (what choosing a smaller DEVICE_GROUP would buy)."""
    model = load_model(model_spec, device=device)
    c, r = model.unet_config.in_channels, model.unet_config.resolution
    x = counter_rng.normals(7, 0, 3 * DEVICE_GROUP * c * r * r, device=device).reshape(3 * DEVICE_GROUP, c, r, r)
    cudnn = torch.backends.cudnn
    before = (cudnn.enabled, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    out: dict = {"device": device, "torch": torch.__version__, "device_group": DEVICE_GROUP,
                 "defaults": {"cudnn_deterministic": before[1], "cudnn_allow_tf32": before[2],
                              "matmul_allow_tf32": before[3]}}
    try:
        out["torch_defaults"] = independence(model, x)
        cudnn.deterministic = True
        out["cudnn_deterministic"] = independence(model, x)
        cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        out["deterministic_tf32_off"] = independence(model, x)
        out["codec_numerics_by_group"] = {str(g): independence(model, x, g) for g in groups}
        cudnn.enabled = False
        out["cudnn_off_tf32_off"] = independence(model, x)
    finally:
        cudnn.enabled, cudnn.deterministic, cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    if model.device.type == "cuda":
        out["graphs"] = [graph_vs_eager(model, x, n) for n in sorted({1, *groups, DEVICE_GROUP})]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.gpu_numerics_probe", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="default")
    ap.add_argument("--groups", type=int, nargs="*", default=[8, 16],
                    help="other call sizes checked under the codec's numerics (at most DEVICE_GROUP)")
    ap.add_argument("--out", type=Path, default=Path("eval/out/gpu_numerics_probe.json"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available (--device cpu checks the script)", file=sys.stderr)
        return 1
    if any(not 1 <= g <= DEVICE_GROUP for g in args.groups):
        print(f"error: --groups must lie in 1..{DEVICE_GROUP}", file=sys.stderr)
        return 1
    result = run(args.model, args.device, tuple(args.groups))
    result["command"] = "python -m eval.gpu_numerics_probe " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    summary = {k: v.get("all_bit_identical") for k, v in result.items() if isinstance(v, dict)
               and "all_bit_identical" in v}
    summary.update({f"group_{g}": v["all_bit_identical"] for g, v in result["codec_numerics_by_group"].items()})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
