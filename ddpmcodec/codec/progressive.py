"""Progressive DDPM codec: the shared chain and Algorithm 3 (encode); Algorithm 4 lives in decoding.py.

Per coded step t -> s the sender transmits a sample of q(x_s | x_t, x_0) under the model's p(x_s | x_t) by PFR
channel simulation (channel.py); x_T is free (shared seed); x_0 is coded exactly from x_{t_end} with rANS under a
quantized discretized Gaussian around x^_0 with causal context: the model's learned layer (entropy/x0net) when it
has one for this t_end and it codes the image shorter, else the per-file fitted pixelmodel.py. Both sides run the
same `_Chain`, so the decoder reproduces the encoder's x_t; a check of the pixels turns any mismatch into a clear error.
"""
from __future__ import annotations

import hashlib
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

from ddpmcodec.channel import pfr as channel
from ddpmcodec.channel import pfr_windows
from ddpmcodec.container import header as container
from ddpmcodec.entropy import pixelmodel
from ddpmcodec.entropy.x0net import coding as learned_x0
from ddpmcodec.entropy import rans as entropy
from ddpmcodec.diffusion import Schedule, gaussian_kl, posterior_mean, predict_x0
from ddpmcodec.errors import FormatError, InputError
from ddpmcodec.images import from_tiles, psnr, tile_grid, tiles_to_uint8, to_tiles
from ddpmcodec.parallel import single_thread
from ddpmcodec.network import windows
from ddpmcodec.network.exact_unet import ExactNetwork
from ddpmcodec.schedule.steps import Profile, equal_kl_schedule, expected_skip_kl, profile_for
from ddpmcodec.schedule.stop_schedules import stop_schedule


@dataclass(frozen=True)
class CodecSettings:
    """Encoder choices; all of them travel in the header."""

    n_steps: int = container.DEFAULTS["n_steps"]  # equal-KL coded steps between T and t_end
    t_end: int | None = None  # PFR runs down to x_{t_end}; x_0 is then coded directly. None: the model's learned
    # x_0 layer's t_end when it has one, else container.DEFAULTS["t_end"]
    budget_bits: int = container.DEFAULTS["budget_bits"]  # target KL per chunk
    margin_bits: int = container.DEFAULTS["margin_bits"]  # candidates per chunk = 2^(budget + margin)
    seed: int = container.DEFAULTS["seed"]
    prior: str = "calibrated"  # or "fixedlarge"
    windowed: bool | None = None  # network on overlapping blended windows (no tile seams); None: WINDOWED_DEFAULT
    x0_layer: str = "auto"  # auto: the shorter of the model's learned layer (if any) and pixelmodel; learned; classic
    schedule: str = "auto"  # a lossy file's schedule (schedule.stop_schedules.SCHEDULE_CHOICES): auto: its own few
    # steps down to its stop where that codes better (format 6), stop: always, progressive: the default's prefix
    exact_network: bool = False  # the U-Net on integer grids (format 8): lossless files decode exactly on any
    # machine, about 3x the network time

    def schedule_left_to_encoder(self) -> bool:
        """Default steps and t_end: a lossy file may get a stop schedule (explicit --steps or --t-end win)."""
        return self.t_end is None and self.n_steps == container.DEFAULTS["n_steps"]


# Multi-tile images are encoded with windowed network evaluation (header flag 0x40) unless settings say otherwise;
# chosen by measurement (eval/seams_bench.py, docs/seams/README.md). One-tile images never set the flag.
WINDOWED_DEFAULT = True

# Bumped whenever the encoder's choices change for the same image, settings and format (e.g. revision 2: the PFR
# search's counter-based arrival times; 3: format version 5; 4: format version 7's shorter lossy files), so that cached
# benchmark results are recomputed; decoders do not use it.
ENCODER_REVISION = 4


def coded_inputs(model, settings: CodecSettings) -> dict:
    """Everything an encoded file depends on besides the image: model and x_0 layer identity, settings, format
    version and encoder revision (the common part of the cache keys of benchmark results)."""
    return {"model": model.identity, "x0_layer": model.x0_layer_identity, "settings": asdict(settings),
            "format": container.VERSION, "encoder": ENCODER_REVISION}


@dataclass
class StepStat:
    t: int  # the receiver holds x_t after this step
    ideal_bits: float  # KL of this step (0 for x_T); lossless layer: its code length
    bytes_if_stopped: int = 0  # size of the valid file that stops here (what `truncate` writes)
    stream_bits: int = 0  # bits the steps up to here occupy on the rANS stack (no header, no coder termination)
    psnr: float = float("nan")  # of x^_0 at t against the original (encoder side)


@dataclass
class EncodeResult:
    data: bytes
    header: container.Header
    steps: list[StepStat] = field(default_factory=list)
    seconds: float = 0.0
    unet_seconds: float = 0.0


def codec_model_id(model, profile: Profile) -> bytes:
    """Short identity (container.MODEL_ID_BYTES) of what the decoder must share: weights, configs, rate profile."""
    layer_id = getattr(model, "x0_layer_identity", None)
    layer = f":{layer_id}" if layer_id is not None else ""
    return hashlib.sha256(f"{model.identity}:{profile.digest()}{layer}".encode()).digest()[:container.MODEL_ID_BYTES]


def learned_layer_for(model, t_end: int):
    """The model's learned x_0 layer if it was trained for this t_end, else None."""
    layer = getattr(model, "x0_layer", None)
    return layer if layer is not None and layer.t_end == t_end else None


def default_t_end(model) -> int:
    layer = getattr(model, "x0_layer", None)
    return layer.t_end if layer is not None else container.DEFAULTS["t_end"]


class _Chain:
    """State shared by encoder and decoder: schedule, prior, coded dimensions, per-step seeds."""

    def __init__(self, model, h: container.Header, mask: torch.Tensor, workers: int = 1):
        """h comes from the encoder's settings or from container.unpack verified against this model's identity
        and tile size (a file of another model never gets here). workers: parallel one-thread workers for tile
        groups and PFR segments."""
        self.model = model
        self.sched = Schedule(model.diffusion)
        self.profile = profile_for(model)
        self.h = h
        T = model.diffusion.T
        if not (1 <= h.t_end < T and 1 <= h.n_steps <= T):
            raise FormatError(f"corrupt header (schedule: t_end {h.t_end}, {h.n_steps} steps; the model has T={T})")
        self.steps = equal_kl_schedule(self.profile, h.n_steps, h.t_end, container.PRIOR_KINDS[h.prior_kind],
                                       model.diffusion)
        self.mask = mask
        self.coded = torch.nonzero(mask.flatten()).squeeze(1)
        self.free = torch.nonzero(~mask.flatten()).squeeze(1)
        self.n_candidates = 2 ** (h.budget_bits + h.margin_bits)
        # the candidates: sliding windows of one sequence per chunk (versions 5 and 6) or independent draws (version 4)
        self.select = pfr_windows.window_select if h.version >= 5 else channel.pfr_select
        self.reconstruct = pfr_windows.window_reconstruct if h.version >= 5 else channel.pfr_reconstruct
        self.unet_seconds = 0.0
        self.workers = workers

    def seed(self, k: int) -> int:
        return channel.mix_seed(self.h.seed, k, self.steps[k], self.steps[k + 1] if k + 1 < len(self.steps) else 0)

    def x_T(self) -> torch.Tensor:
        return channel.free_noise(channel.mix_seed(self.h.seed, 1 << 40), self.mask.numel()).view(self.mask.shape)

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Predicted noise for the tiles x (N, 3, R, R): per tile, or (header flag) from overlapping windows over
        the whole padded image, blended (network.windows); the same on both sides."""
        start = time.perf_counter()
        network = ExactNetwork(self.model) if self.h.exact_network else self.model
        if self.h.windowed:
            grid = tile_grid(self.h.height, self.h.width, self.h.tile)
            out = windows.eps_windowed(network, x, t, grid, workers=self.workers)
        else:
            out = network.eps_reproducible(x, t, self.workers).float()
        self.unet_seconds += time.perf_counter() - start
        return out

    def x0_hat(self, x_t: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        return predict_x0(self.sched, x_t, eps, t).clamp(-1.0, 1.0)

    def prior(self, x_t: torch.Tensor, t: int, s: int, x0_hat: torch.Tensor) -> tuple[torch.Tensor, float]:
        mu_p = posterior_mean(self.sched, x0_hat, x_t, t, s)
        kind = container.PRIOR_KINDS[self.h.prior_kind]
        var_p = self.sched.prior_variance(t, s, kind, mse_x0=float(self.profile.mse_x0[t]))
        return mu_p, var_p

    def n_chunks(self, q_log_kl: int) -> int:
        """Chunks of a step whose transmitted KL is 2^(q/8) bits: about budget bits each, at most one per coded
        dimension (tiny images with small budgets), the same on both sides."""
        return max(1, min(len(self.coded), math.ceil(2.0 ** (q_log_kl / 8.0) / self.h.budget_bits)))

    def first_log_kl_prediction(self) -> int:
        t, s = self.steps[0], self.steps[1]
        kind = container.PRIOR_KINDS[self.h.prior_kind]
        expected = expected_skip_kl(self.sched, self.profile, t, s, kind) * len(self.coded)
        return entropy.quantize_log_kl(expected)

    def layout(self, k: int, q_log_kl: int) -> channel.ChunkLayout:
        """Step k's chunk partition: seeded, with as many chunks as the step's transmitted KL asks for."""
        return channel.ChunkLayout.make(len(self.coded), self.n_chunks(q_log_kl), channel.mix_seed(self.seed(k), 0))

    def push_steps(self, coder, symbols: list[tuple[int, np.ndarray, int]]) -> list[int]:
        """Push the steps' (log-KL, indices, log-KL prediction) so that step 0 ends on top. Returns the stack's
        valid bits before each step's data: entry k is what lies below step k (len(symbols) + 1 entries)."""
        marks = [coder.num_valid_bits()]
        for q, idx, pred in reversed(symbols):
            law = entropy.zipf_model(self.n_candidates, entropy.zipf_kl_for(q, len(idx), self.h.budget_bits))
            coder.encode_reverse(np.asarray(idx, np.int32), law)
            entropy.push_log_kl(coder, np.array([q]), np.array([pred]))
            marks.append(coder.num_valid_bits())
        return marks[::-1]

    def stack_bytes(self, symbols: list[tuple[int, np.ndarray, int]], end_state: int | None = None) -> bytes:
        """Payload of a file holding only these steps: a fresh stack (started from end_state, see
        container.header.Header.end_state), as trimmed bytes (entropy.stack_to_bytes)."""
        coder = entropy.new_coder(initial_state=end_state)
        self.push_steps(coder, symbols)
        return entropy.stack_to_bytes(coder.get_compressed())

    def advance(self, k: int, mu_p: torch.Tensor, var_p: float, layout: channel.ChunkLayout,
                indices: torch.Tensor) -> torch.Tensor:
        """Rebuild x_s from the step's chunk indices (the same code on both sides)."""
        seed = self.seed(k)
        z = torch.empty(self.mask.numel(), dtype=torch.float32)
        z[self.coded] = layout.scatter(self.reconstruct(seed, layout, indices), len(self.coded))
        if len(self.free):
            z[self.free] = channel.free_noise(seed, len(self.free))
        return mu_p + math.sqrt(var_p) * z.view(self.mask.shape)


def _header_for(model, profile, pixels, source_mode, s: CodecSettings,
                stop_at_t: int = 0) -> tuple[container.Header, bool]:
    """The header of a file encoded with these settings (steps_present, lossless, payload_bytes still 0), and whether
    it got a schedule of its own for its stop: a lossy file (stop_at_t > 0) with the default steps and t_end may
    (stop_schedules)."""
    if s.prior not in container.PRIOR_KINDS:
        raise InputError(f"unknown prior {s.prior!r}; choose from {container.PRIOR_KINDS}")
    T = model.diffusion.T
    t_end = default_t_end(model) if s.t_end is None else s.t_end
    n_steps = s.n_steps
    own = stop_schedule(stop_at_t, s.schedule, T)  # validates s.schedule
    if not s.schedule_left_to_encoder():
        own = None
    if own is not None:
        n_steps, t_end = own
    elif s.t_end is None and 0 < stop_at_t < t_end:  # a lossy file asked to go deeper than the default chain
        t_end = stop_at_t
    if s.x0_layer not in container.X0_LAYER_CHOICES:
        raise InputError(f"unknown x_0 layer {s.x0_layer!r}; choose from {container.X0_LAYER_CHOICES}")
    if s.x0_layer == "learned" and learned_layer_for(model, t_end) is None:
        raise InputError(f"this model has no learned x_0 layer for t_end {t_end}")
    if not 1 <= t_end < T:
        raise InputError(f"t_end must be in 1..{T - 1}")
    if not container.channel_settings_ok(container.VERSION, s.budget_bits, s.margin_bits):
        raise InputError(f"chunk budget must be 1..{container.MAX_BUDGET_BITS[container.VERSION]} bits, margin "
                         f"0..{container.MAX_MARGIN_BITS}, budget + margin <= "
                         f"{container.MAX_CANDIDATE_BITS[container.VERSION]}")
    if s.seed < 0 or s.n_steps < 1:
        raise InputError("seed must be >= 0 and steps >= 1")
    h, w, _ = pixels.shape
    windowed = WINDOWED_DEFAULT if s.windowed is None else bool(s.windowed)
    multi_tile = tile_grid(h, w, model.unet_config.resolution) != (1, 1)
    return (container.Header(
        mode=container.MODE_PROGRESSIVE, model_id=codec_model_id(model, profile), width=w, height=h,
        source_mode=container.SOURCE_MODES.index(source_mode), tile=model.unet_config.resolution,
        n_steps=int(n_steps), t_end=int(t_end), steps_present=0, lossless=0, budget_bits=int(s.budget_bits),
        margin_bits=int(s.margin_bits), prior_kind=container.PRIOR_KINDS.index(s.prior), seed=int(s.seed),
        pixel_crc=pixel_check(pixels), payload_bytes=0, windowed=int(windowed and multi_tile),
        version=container.version_for(s.exact_network)), own is not None)


def pixel_check(pixels: np.ndarray) -> int:
    """16-bit check of the exact pixels (low bits of CRC-32), stored with lossless files."""
    return zlib.crc32(np.ascontiguousarray(pixels).tobytes()) & 0xFFFF


def encode(pixels: np.ndarray, model, settings: CodecSettings = CodecSettings(), *, source_mode: str = "RGB",
           stop_at_t: int = 0, target_psnr: float | None = None, past_bytes: int = 0,
           progress: Callable[[int, int], None] | None = None) -> EncodeResult:
    """Encode uint8 (H, W, 3) pixels. stop_at_t > 0 ends the file at the first coded t <= stop_at_t (lossy);
    target_psnr ends it at the first step whose x^_0 reaches that PSNR; past_bytes > 0 ends it at the second coded step
    whose prefix file is larger than that many bytes (the steps --target-bpp looks at). progress(k, n) is called per
    step. Runs with one intra-op thread; the caller's thread count sets the parallel workers (tile groups, segments)."""
    workers = torch.get_num_threads()
    with single_thread():
        return _encode(pixels, model, settings, source_mode, stop_at_t, target_psnr, past_bytes, progress, workers)


def _encode(pixels, model, settings, source_mode, stop_at_t, target_psnr, past_bytes, progress,
            workers) -> EncodeResult:
    start = time.perf_counter()
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise InputError("expected an (H, W, 3) uint8 image")
    channel.check_candidate_generator(model.device)  # the search runs on the model's device
    profile = profile_for(model)
    h, own_schedule = _header_for(model, profile, pixels, source_mode, settings, stop_at_t)
    if own_schedule:  # the file ends at its t_end (its schedule may hold a step between t_end and stop_at_t)
        stop_at_t = h.t_end
    x0, mask = to_tiles(pixels, h.tile)
    chain = _Chain(model, h, mask, workers)
    steps = chain.steps
    height, width = pixels.shape[:2]
    x_t = chain.x_T()
    stats = [StepStat(t=steps[0], ideal_bits=0.0)]
    symbols: list[tuple[int, np.ndarray, float]] = []
    prev_q = chain.first_log_kl_prediction()
    stopped = False  # ended early by stop_at_t, a reached target_psnr or past_bytes (else the lossless file)
    steps_past = 0  # coded steps whose prefix file is larger than past_bytes
    x0_hat = None
    for k in range(len(steps) - 1):
        t, s = steps[k], steps[k + 1]
        eps = chain.eps(x_t, t)
        x0_hat = chain.x0_hat(x_t, t, eps)
        stats[-1].psnr = psnr(tiles_to_uint8(x0_hat, height, width), pixels)
        if (stop_at_t and t <= stop_at_t) or (target_psnr is not None and stats[-1].psnr >= target_psnr) \
                or steps_past == 2:
            stopped = True
            x0_hat = None
            break
        mu_p, var_p = chain.prior(x_t, t, s, x0_hat)
        _, _, var_q = chain.sched.skip_posterior_coefs(t, s)
        mu_q = posterior_mean(chain.sched, x0, x_t, t, s)
        kl_bits = float(gaussian_kl(mu_q.double().flatten()[chain.coded], var_q,
                                    mu_p.double().flatten()[chain.coded], var_p).sum()) / math.log(2.0)
        q = entropy.quantize_log_kl(kl_bits)
        layout = chain.layout(k, q)
        delta = ((mu_p - mu_q).flatten()[chain.coded] / math.sqrt(var_q)).float()
        indices = chain.select(chain.seed(k), layout, delta.to(model.device), math.sqrt(var_p / var_q),
                               chain.n_candidates, workers=chain.workers).cpu()
        symbols.append((q, indices.numpy().astype(np.int32), prev_q))
        prev_q = q
        x_t = chain.advance(k, mu_p, var_p, layout, indices)
        stats.append(StepStat(t=s, ideal_bits=kl_bits))
        if past_bytes and (steps_past or truncated_size(chain, symbols) > past_bytes):
            steps_past += 1
        if progress:
            progress(k + 1, len(steps) - 1)
    if not stopped:
        eps = chain.eps(x_t, steps[-1])
        x0_hat = chain.x0_hat(x_t, steps[-1], eps)
        stats[-1].psnr = psnr(tiles_to_uint8(x0_hat, height, width), pixels)
        stopped = bool(stop_at_t and steps[-1] <= stop_at_t)  # a lossy file that ends at t_end
    lossless = not stopped
    h.steps_present, h.lossless = len(symbols), int(lossless)
    coder = entropy.new_coder(initial_state=h.end_state())
    if lossless:
        h.learned_x0, x0_bits = _push_x0_layer(coder, model, h, settings.x0_layer, pixels, x0_hat, x_t)
        stats.append(StepStat(t=0, ideal_bits=x0_bits, psnr=float("inf")))
    marks = chain.push_steps(coder, symbols)
    payload = entropy.stack_to_bytes(coder.get_compressed())
    h.payload_bytes = len(payload)
    data = container.pack(h, payload)
    for k, st in enumerate(stats[: len(symbols) + 1]):
        st.bytes_if_stopped = truncated_size(chain, symbols[:k])
        st.stream_bits = marks[0] - marks[k]
    if lossless:
        stats[-1].bytes_if_stopped, stats[-1].stream_bits = len(data), marks[0]
    return EncodeResult(data, h, stats, time.perf_counter() - start, chain.unet_seconds)


def _push_x0_layer(coder, model, h: container.Header, choice: str, pixels: np.ndarray, x0_hat: torch.Tensor,
                   x_t: torch.Tensor) -> tuple[int, float]:
    """Push x_0 given x_{t_end} with the learned layer or pixelmodel (choice: container.X0_LAYER_CHOICES; auto takes the
    shorter). Returns (learned?, ideal bits)."""
    rows = pixelmodel.mean_rows(x0_hat, h.height, h.width)
    layer = learned_layer_for(model, h.t_end) if choice != "classic" else None
    if layer is not None:  # one network pass gives both the code length and the symbols to push
        learned = learned_x0.prepare(layer.net, pixels, rows, from_tiles(x_t, h.height, h.width))
        learned_bits = learned.bits()
    if choice != "learned":
        params = pixelmodel.fit(pixels, rows)
        classic_bits = pixelmodel.code_length_bits(pixels, rows, params)
        if layer is None or classic_bits < learned_bits:
            pixelmodel.push(coder, pixels, rows, params)
            return 0, classic_bits
    learned.push(coder)
    return 1, learned_bits


def truncated_file(chain: _Chain, symbols: list[tuple[int, np.ndarray, int]]) -> bytes:
    """The valid lossy file holding only these first steps, on a fresh stack (what `truncate` and
    `encode --stop-at` write)."""
    cut = container.Header(**{**chain.h.__dict__, "steps_present": len(symbols), "lossless": 0})
    payload = chain.stack_bytes(symbols, cut.end_state())
    cut.payload_bytes = len(payload)
    return container.pack(cut, payload)


def truncated_size(chain: _Chain, symbols: list[tuple[int, np.ndarray, int]]) -> int:
    """Size of :func:`truncated_file`."""
    return len(truncated_file(chain, symbols))
