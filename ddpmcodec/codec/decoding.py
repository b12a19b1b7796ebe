"""Algorithm 4: the decoder of progressive files (stoppable at any coded step) and the stream reader that parses
them without the network. It drives the same `_Chain` as the encoder (progressive.py), so it reproduces the
encoder's x_t; a check of the pixels turns any mismatch into a clear error.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch

from ddpmcodec.channel import pfr as channel
from ddpmcodec.container import blocks
from ddpmcodec.container import header as container
from ddpmcodec.container.limits import DecodeLimits
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.entropy.x0net import coding as learned_x0
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.errors import DeterminismError, FormatError, InputError
from ddpmcodec.images import from_tiles, tile_grid, tiles_to_uint8, to_tiles
from ddpmcodec.parallel import single_thread
from ddpmcodec.network import windows
from ddpmcodec.schedule.steps import profile_for
from ddpmcodec.codec.progressive import _Chain, codec_model_id, learned_layer_for, pixel_check, truncated_size


def prefix_words(total: int, mark: int) -> int:
    """Words a stack prefix needs so that everything above `mark` decodes (the AnsCoder head holds 2 words)."""
    if mark >= total:
        return 0
    return total if mark == 0 else min(total, total - mark + 2)


class StreamReader:
    """A progressive file opened for reading: header, chain, and the per-step symbols popped off its stack.

    Popping needs no network evaluation (indices use fixed laws), so step tables and truncation are cheap.
    """

    def __init__(self, data: bytes, model, limits: DecodeLimits | None = None, workers: int = 1):
        channel.check_candidate_generator()
        limits = limits or DecodeLimits()
        model_id = codec_model_id(model, profile_for(model))
        self.parsed = container.unpack(data, model_id, model.unet_config.resolution)
        h = self.parsed.header
        if h.mode != container.MODE_PROGRESSIVE:
            raise FormatError("this file was written in bits-back mode; decode it with the bits-back decoder")
        limits.check_pixels(h.width * h.height, f"the {h.width}x{h.height} image in this file")
        rows, cols = tile_grid(h.height, h.width, h.tile)
        per_step = rows * cols * (windows.cost_factor((rows, cols), h.tile) if h.windowed else 1.0)
        limits.check_work(math.ceil(per_step * (h.steps_present + 1)), len(data))
        _, mask = to_tiles(np.zeros((h.height, h.width, 3), np.uint8), h.tile)
        self.chain = _Chain(model, h, mask, workers)
        last = len(self.chain.steps) - 1
        if h.steps_present > last or (h.lossless and h.steps_present != last):
            raise FormatError("corrupt header (step count does not match the schedule)")
        if h.learned_x0 and learned_layer_for(model, h.t_end) is None:
            raise FormatError(f"corrupt header (a learned x_0 layer for t_end {h.t_end}, which this model has not)")
        if h.steps_present == 0 and not h.lossless and h.payload_bytes and not h.end_checked():
            raise FormatError("corrupt header (a payload but no coded steps)")
        self.words = entropy.bytes_to_stack(self.parsed.payload, h.payload_bytes)
        self.total_words = -(-h.payload_bytes // 4)
        if self.parsed.end_state is not None and self.parsed.complete:
            self._check_end_state(self.parsed.end_state)
        self._rewind()

    def _rewind(self) -> None:
        self.coder = entropy.new_coder(self.words)
        self.symbols: list[tuple[int, np.ndarray, int]] = []  # popped so far: (log-KL, indices, prediction)
        self.prev_q = self.chain.first_log_kl_prediction() if len(self.chain.steps) > 1 else 0

    def _check_end_state(self, end_state: int) -> None:
        """The whole-file check of an end-checked file (container.header): popping every coded step must leave
        exactly the state the encoder's stack started from."""
        self._rewind()
        for _ in range(self.parsed.header.steps_present):
            self.pop_step()
        left = self.coder.get_compressed()
        if len(left) != 1 or int(left[0]) != end_state:
            raise FormatError("corrupt file (end-state check failed: damaged, cut short or extended), or encoded "
                              "with a different model")

    def raw_prefix_bytes(self) -> int:
        """Length of the plain byte prefix of this file that holds everything popped so far."""
        h = self.parsed.header
        words = prefix_words(self.total_words, self.total_words - len(self.words) + self.coder.num_words())
        needed = entropy.stack_prefix_bytes(h.payload_bytes, words)
        return self.parsed.header_bytes + blocks.stored_prefix_for(needed, h.payload_bytes)

    def pop_step(self) -> tuple[int, np.ndarray, bool]:
        """The next coded step's (quantized log-KL, chunk indices, data complete?)."""
        chain = self.chain
        q = entropy.pop_log_kl(self.coder, self.prev_q)
        n = chain.n_chunks(q)
        if n > 4 * len(chain.coded):
            raise FormatError("corrupt payload (implausible chunk count)")
        kl = entropy.zipf_kl_for(q, n, self.parsed.header.budget_bits)
        # each index costs at least -log2 P(0) bits: more chunks than the stack can hold is damage, or a cut
        if n * entropy.zipf_min_bits(chain.n_candidates, kl) > 32 * self.coder.num_words() + 64:
            if self.parsed.complete:
                raise FormatError("corrupt payload (more chunk indices than the file can hold)")
            return q, np.zeros(0, np.int32), False
        idx = self.coder.decode(entropy.zipf_model(chain.n_candidates, kl), n)
        self.symbols.append((q, idx, self.prev_q))
        self.prev_q = q
        complete = self.parsed.complete or self.coder.num_words() >= 2
        return q, idx, complete


class DecodedStep(NamedTuple):
    """One stop point of Algorithm 4; unpacks as (t, bytes_read, pixels)."""

    t: int  # 0 for the exact (lossless) image
    bytes_read: int  # size of the valid file that stops here (what `truncate` writes; the whole file at t = 0)
    pixels: np.ndarray  # (H, W, 3) uint8: x^_0 (eq. 15) at t, or the exact image at t = 0


def _decode_steps(data: bytes, model, stop_at_t: int | None = None, stop_at_bytes: int | None = None,
                       every_step: bool = True, progress: Callable[[int, int], None] | None = None,
                       limits: DecodeLimits | None = None, workers: int = 1) -> Iterator[DecodedStep]:
    """decode_progressive's work, on the calling thread's settings; workers: parallel one-thread workers."""
    reader = StreamReader(data, model, limits, workers)
    parsed, h, chain, coder = reader.parsed, reader.parsed.header, reader.chain, reader.coder
    steps = chain.steps
    x_t = chain.x_T()
    limit_t = -1 if stop_at_t is None else stop_at_t
    sizes = [truncated_size(chain, [])]  # sizes[k]: the valid file that stops after k coded steps
    if stop_at_bytes is not None and stop_at_bytes < sizes[0]:
        raise InputError(f"{stop_at_bytes} bytes is less than the header ({sizes[0]} bytes)")
    for k in range(h.steps_present + 1):
        t = steps[k]
        eps = chain.eps(x_t, t)
        x0_hat = chain.x0_hat(x_t, t, eps)
        if progress:
            progress(k + 1, h.steps_present + 1)
        stop = k == h.steps_present or t <= limit_t
        if not stop:
            q, idx, complete = reader.pop_step()
            if not complete:
                stop = True  # a partial file: this step's data is cut off
            else:
                sizes.append(truncated_size(chain, reader.symbols))
                stop = stop_at_bytes is not None and sizes[-1] > stop_at_bytes
        to_exact = stop and k == h.steps_present and h.lossless and parsed.complete and limit_t < t and (
            stop_at_bytes is None or stop_at_bytes >= len(data))
        if every_step or (stop and not to_exact):
            yield DecodedStep(t, sizes[k], tiles_to_uint8(x0_hat, h.height, h.width))
        if stop:
            break
        mu_p, var_p = chain.prior(x_t, t, steps[k + 1], x0_hat)
        x_t = chain.advance(k, mu_p, var_p, chain.layout(k, q), torch.from_numpy(idx.astype(np.int64)))
    if not to_exact:
        return
    rows = pixelmodel.mean_rows(x0_hat, h.height, h.width)
    if h.learned_x0:
        pixels = learned_x0.pop(coder, learned_layer_for(model, h.t_end).net, rows, from_tiles(x_t, h.height, h.width))
    else:
        pixels = pixelmodel.pop(coder, rows)
    if pixel_check(pixels) != h.pixel_crc:
        raise DeterminismError("decoded pixels fail the checksum: this machine did not reproduce the encoder's "
                               "network outputs (different device, CPU kernels or torch build); lossy previews "
                               "(--stop-at) still decode")
    yield DecodedStep(0, len(data), pixels)


def decode_progressive(data: bytes, model, stop_at_t: int | None = None, stop_at_bytes: int | None = None,
                       every_step: bool = True, progress: Callable[[int, int], None] | None = None,
                       limits: DecodeLimits | None = None) -> Iterator[DecodedStep]:
    """Algorithm 4: yield x^_0 after every coded step (or only the final result when every_step=False).
    progress(k, n) is called after each of the (at most) n network evaluations, whether or not a step is yielded.

    Stops at the first coded t <= stop_at_t, at the last step whose prefix fits in stop_at_bytes, or at the end of
    what the file holds; a complete lossless file ends with the exact image (t = 0). The work between yields runs
    with one intra-op thread (the caller's thread count sets the parallel workers); the caller's setting is back
    whenever a step is handed over.
    """
    workers = torch.get_num_threads()
    steps = _decode_steps(data, model, stop_at_t, stop_at_bytes, every_step, progress, limits, workers)
    while True:
        with single_thread():
            step = next(steps, None)
        if step is None:
            return
        yield step
