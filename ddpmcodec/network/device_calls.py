"""Network calls of one fixed shape on a non-CPU device: explicit numerics and, on CUDA, a captured graph.

The codecs need a sample's network output to be a function of that sample alone (batch.lockstep pools the tiles of
many images into one call) and the same on every run. Measured on an H200 (docs/results/gpu_probe_h200_tf32.json):
with cuDNN's default TF32 convolutions, a sample's output at position 31 of a 32-sample call differed from the same
sample at position 0 (by up to 7e-4); with TF32 off and deterministic cuDNN algorithms, all 9 placements tested
were bit-identical. So every call runs with TF32 off (convolutions and matmuls), deterministic cuDNN algorithms and
no cuDNN benchmarking (which picks algorithms by timing, so differently from run to run).

A 32x32 U-Net call launches a few hundred small kernels: about 11 ms of launch work per call on that H200, for
2-4 ms of arithmetic. On CUDA the call is captured once per input shape as a CUDA graph and replayed (the same
kernels, so the same bits: replay and eager calls were bit-identical in the same probe), with graph_s 2.0 / 3.9 ms
against 10.5 / 11.0 ms eager for 1 / 32 samples, both with TF32 on. With the numerics above (TF32 off) a 32-sample
graph call took 9.9 ms (docs/results/gpu_check_h200_pooled.json): fp32 arithmetic, no longer launches, dominates.
"""
from __future__ import annotations

import contextlib
import threading

import torch


@contextlib.contextmanager
def device_numerics():
    """TF32 off for convolutions and matmuls, deterministic cuDNN algorithms, no benchmarking; restored after."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32


class FixedShapeCalls:
    """net(x, steps) for x of a few fixed shapes on one device, under device_numerics; CUDA graphs on CUDA.

    Owned by one DiffusionModel (no shared state); thread-safe (a lock around each call, since a graph's input
    and output buffers are shared between replays)."""

    def __init__(self, net: torch.nn.Module, device: torch.device):
        self.net = net
        self.device = device
        self._graphs: dict[tuple, tuple] = {}  # x shape -> (graph, x buffer, steps buffer, output buffer)
        self._lock = threading.Lock()
        self.use_graphs = device.type == "cuda"

    def __call__(self, x: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float32 outputs for x (B, C, H, W) float32 and 0-based steps (B,) int64, both on the
        device; a new tensor (never a buffer that a later call overwrites)."""
        with self._lock, device_numerics(), torch.inference_mode():
            if not self.use_graphs:
                return self.net(x, steps)
            key = tuple(x.shape)
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(x, steps)
                except RuntimeError:  # capture unsupported here: eager calls (the same kernels, the same bits)
                    self.use_graphs = False
                    torch.cuda.synchronize(self.device)
                    return self.net(x, steps)
            graph, x_buf, steps_buf, out_buf = self._graphs[key]
            x_buf.copy_(x)
            steps_buf.copy_(steps)
            graph.replay()
            return out_buf.clone()

    def _capture(self, x: torch.Tensor, steps: torch.Tensor) -> tuple:
        x_buf, steps_buf = x.clone(), steps.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up on a side stream, as graph capture requires
            for _ in range(2):
                self.net(x_buf, steps_buf)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out_buf = self.net(x_buf, steps_buf)
        return graph, x_buf, steps_buf, out_buf
