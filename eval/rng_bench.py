"""Normals per second on one CPU thread: today's torch generator vs the counter-based generators (issue 11).

    python -m eval.rng_bench                 # 2^22 normals per call, 7 interleaved rounds, best and median
    python -m eval.rng_bench --n 1048576 --rounds 3 --json runs/rng_bench.json

Variants (all produce float32 N(0, 1) samples):
  randn-1gen      torch.randn(n) from one CPU generator (MT19937 + torch's vectorised Box-Muller): the raw speed of
                  today's path
  randn-pfr       what pfr.py does today: a fresh generator seeded per block of 64 x 4096 candidates
  philox          counter_rng.normals(method="philox"): Philox4x32-10 + 16-bit quantile table (bit-exact everywhere)
  splitmix        counter_rng.normals(method="splitmix"): SplitMix64 + the same table (bit-exact everywhere)
  philox-exact    Philox with the overflow-free 32x16-bit multiply (the reference), + table
  philox-bm64     Philox bits -> Box-Muller in float64 -> float32: continuous, but not bit-exact across devices
  bits-philox / bits-splitmix / table-gather: the pieces (16-bit uniforms per chunk, discarded; the gather of
                  n table entries alone)
Machine load matters on a shared box: the script prints `uptime` and reports the best (least disturbed) and the
median round; compare variants within one run only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time

import torch

from ddpmcodec.channel import counter_rng as cr


def _randn_pfr(n: int) -> torch.Tensor:
    block = 64 * 4096
    parts = [torch.randn(64, 4096, generator=torch.Generator().manual_seed(1000 + i)).reshape(-1)
             for i in range(-(-n // block))]
    return torch.cat(parts)[:n]


def _philox_exact(n: int) -> torch.Tensor:
    """Like counter_rng.normals(method="philox"), same chunking, but with the overflow-free multiply."""
    out = torch.empty(n, dtype=torch.float32)
    per_chunk = 8 * cr.CHUNK_CALLS
    for s in range(0, n, per_chunk):
        m = min(per_chunk, n - s)
        b = torch.arange(s // 8, (s + m + 7) // 8, dtype=torch.int64)
        z = torch.zeros_like(b)
        w = torch.stack(cr.philox_lanes_exact(b & cr.MASK32, b >> 32, z, z.clone(), 7, 0), dim=-1)
        u = torch.stack([w & cr.MASK16, w >> 16], dim=-1).reshape(-1)[:m]
        torch.index_select(cr.normal_table(), 0, u, out=out[s: s + m])
    return out


def _philox_bm64(n: int) -> torch.Tensor:
    """Philox words -> two 32-bit uniforms per normal pair -> Box-Muller in float64 -> float32."""
    out = torch.empty(n, dtype=torch.float32)
    per_chunk = 4 * cr.CHUNK_CALLS
    for s in range(0, n, per_chunk):
        m = min(per_chunk, n - s)
        b = torch.arange(s // 4, (s + m + 3) // 4, dtype=torch.int64)
        z = torch.zeros_like(b)
        w = (torch.stack(cr.philox_lanes(b & cr.MASK32, b >> 32, z, z.clone(), 7, 0), dim=-1) & cr.MASK32).double()
        u1 = (w[:, 0::2] + 0.5) * 2.0 ** -32  # (0, 1)
        u2 = w[:, 1::2] * 2.0 ** -32
        r = torch.sqrt(-2.0 * torch.log(u1))
        t = 2 * math.pi * u2
        out[s: s + m] = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=-1).reshape(-1)[:m].float()
    return out


def _bits(n: int, method: str) -> None:
    """Only the 16-bit uniforms, chunk by chunk as normals() makes them, not kept (no large output to write)."""
    per = cr.PER_CALL[method]
    for b0 in range(0, -(-n // per), cr.CHUNK_CALLS):
        cr._u16_of_calls(method, 7, 0, torch.arange(b0, min(b0 + cr.CHUNK_CALLS, -(-n // per)), dtype=torch.int64))


def variants(n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 65536, (n,), dtype=torch.int64)
    table = cr.normal_table()
    return {
        "randn-1gen": lambda: torch.randn(n, generator=g),
        "randn-pfr": lambda: _randn_pfr(n),
        "philox": lambda: cr.normals(7, 0, n, method="philox"),
        "splitmix": lambda: cr.normals(7, 0, n, method="splitmix"),
        "philox-exact": lambda: _philox_exact(n),
        "philox-bm64": lambda: _philox_bm64(n),
        "bits-philox": lambda: _bits(n, "philox"),
        "bits-splitmix": lambda: _bits(n, "splitmix"),
        "table-gather": lambda: torch.index_select(table, 0, u),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 22, help="normals per timed call")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each times every variant once)")
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"1 thread, load average {load}")
    cr.check_device("cpu")
    todo = {k: f for k, f in variants(args.n).items() if args.only is None or k in args.only}
    for f in todo.values():  # warm-up
        f()
    times: dict = {k: [] for k in todo}
    for _ in range(args.rounds):
        for name, f in todo.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    rows = {}
    print(f"{'variant':15s} {'best M/s':>9s} {'median M/s':>11s} {'ns/normal':>10s} {'s per 1e8':>10s}")
    for name, ts in times.items():
        best, med = args.n / min(ts) / 1e6, args.n / statistics.median(ts) / 1e6
        rows[name] = {"best_M_per_s": round(best, 1), "median_M_per_s": round(med, 1)}
        print(f"{name:15s} {best:9.1f} {med:11.1f} {1e3 / best:10.2f} {100 / best:10.2f}")
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average after: {load_after}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "rounds": args.rounds, "load_before": load, "load_after": load_after,
                       "torch": torch.__version__, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
