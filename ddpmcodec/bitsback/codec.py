"""Lossless bits-back ANS over the DDPM chain, for one image or a set sharing one stack (notes §5).

Each image is coded as the discretized latent chain x_T, x_{t_1}, ..., x_{t_K} = x_{t_end}, x_0 of
:mod:`ddpmcodec.bitsback.chain`. x_T is shared noise (free: p(x_T) also serves as its q, which differs from
q(x_T|x_0) by ~1e-5 bits/dim). Two orders, both decoding x_T, x_{t_1}, ..., x_0 in Algorithm 4's order:

* ``bitswap`` (default): q factorized along the forward process, q(x_{t_j} | x_{t_{j+1}}, x_T) (x_0 for j = K).
  Encoder: pop x_{t_K}, push x_0; for j = K-1..1 pop x_{t_j}, push x_{t_{j+1}} with p; finally push x_{t_1}.
  The decoder returns each latent's bits as soon as it has the next one: initial bits ~ two levels' worth.
* ``bbans``: q is the reverse posterior q(x_{t_j} | x_{t_{j-1}}, x_0). The encoder pops every latent before it
  pushes anything, so the initial bits are the sum over all levels (returned only after x_0 is decoded).

For a set the encoder codes the images last to first on one stack, so image i pops the bits image i+1 pushed and
only the first-coded image draws on the initial words. Those are SHAKE-256 pseudo-random words from the file's seed;
the untouched bottom of them is not stored (the decoder regenerates it), so the file pays exactly the consumed seed
words. After the last image the decoder checks that the whole seed came back, then the pixel CRC
(DeterminismError otherwise). File layout: :mod:`ddpmcodec.bitsback.format`.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from ddpmcodec.channel import pfr as channel

from ddpmcodec.container import header as container

from ddpmcodec.entropy import rans as entropy

from ddpmcodec.entropy import pixelmodel
from ddpmcodec.bitsback.chain import (ImageChain, OutOfRange, check_levels, pop_p, pop_q, push_p, push_q,
                             schedule_for)
from ddpmcodec.bitsback.format import (MAX_ATTEMPTS, MAX_GRID_BITS, MIN_GRID_BITS, ORDERS, SubHeader, file_info, read_file,
                              seed_estimate, seed_words)
from ddpmcodec.codec.progressive import codec_model_id
from ddpmcodec.diffusion import LOG2, gaussian_kl
from ddpmcodec.errors import DeterminismError, FormatError, InputError
from ddpmcodec.images import tiles_to_uint8, to_tiles
from ddpmcodec.network.exact_unet import ExactNetwork

MIN_WORDS = 4  # the encoder's stack must never drop below this (else: more seed words and retry)


# Grid resolution by set size (bundled CIFAR-10 model, 100 coded steps; measurements in docs/bitsback.md). Each grid
# bit adds ~2 bits/dim of one image to the initial bits; the net rate is flat from grid 0 up (within 0.01 bits/dim)
# and 0.085 bits/dim worse at -1, so -1 pays off below ~16 images. The file records the grid; decoders do not care.
AUTO_GRID = ((16, 0), (1, -1))


def default_grid_bits(n_images: int) -> int:
    return next(g for n, g in AUTO_GRID if n_images >= n)


@dataclass(frozen=True)
class BitsBackSettings:
    n_steps: int = 100  # equal-KL coded steps between T and t_end
    t_end: int = 1  # last latent; x_0 is coded from x_{t_end} with the pixel model
    grid_bits: int | None = None  # latent grid = (smallest std of the level) / 2^grid_bits; None: by set size
    order: str = "bitswap"
    seed: int = 0
    exact_network: bool = False  # the U-Net on integer grids (format 8, --portable): exact decoding on any machine

    def resolved(self, n_images: int) -> "BitsBackSettings":
        if self.grid_bits is not None:
            return self
        return dataclasses.replace(self, grid_bits=default_grid_bits(n_images))


@dataclass
class ImageStat:
    dims: int  # coded dimensions (3 * H * W)
    net_bits: float  # growth of the stack while coding this image (its share of the file, seed excluded)
    nelbo_bits: float  # prior KL + sum of step KLs + decoder term, on the same draws (continuous latents)
    kl_bits: float  # sum of step KLs (the rate)
    decoder_bits: float  # code length of x_0 given x_{t_end} under the x_0 layer (parameters included)
    seconds: float = 0.0


@dataclass
class EncodeResult:
    data: bytes
    header: container.Header
    images: list[ImageStat]
    seed_bits: int  # consumed pseudo-random seed bits: stored in the file, returned to the decoder at the end
    overhead_bytes: int  # container header + sub-header + padding
    settings: BitsBackSettings | None = None  # as used (grid resolved)
    seconds: float = 0.0
    unet_seconds: float = 0.0
    attempts: int = 1

    @property
    def net_bits(self) -> float:
        return 8.0 * len(self.data) - self.seed_bits


@dataclass
class DecodedStep:
    image: int
    t: int  # 0: the exact image; else x^_0 predicted from x_t (only with every_step=True)
    pixels: np.ndarray  # (H, W, 3) uint8


@dataclass
class DecodedSet:
    images: list[np.ndarray]
    source_modes: list[str]
    names: list[str] | None


class _SeedExhausted(Exception):
    pass


# ---- one image --------------------------------------------------------------------------------------------------
class _Coder:
    """The shared stack plus the encoder's low-water check."""

    def __init__(self, words: np.ndarray, check: bool, trace: list | None = None):
        self.ans = entropy.new_coder(words)
        self.check = check
        self.trace = trace  # optional (label, stack bits) after each operation, for measurements

    def popped(self, label: str = ""):
        if self.check and self.ans.num_words() < MIN_WORDS:
            raise _SeedExhausted
        self.mark(label)

    def mark(self, label: str):
        if self.trace is not None:
            self.trace.append((label, self.ans.num_bits()))


def _step_kl(chain: ImageChain, j: int, x_prev_real: np.ndarray, x0_real: np.ndarray, mu_p: np.ndarray) -> float:
    lv = chain.levels[j - 1]
    mu_q = torch.from_numpy(chain.rev_mean(j, x_prev_real, x0_real))
    return float(gaussian_kl(mu_q, lv.rev[2], torch.from_numpy(mu_p), lv.p_var).sum()) / LOG2


def _prior_kl(chain: ImageChain, x0_real: np.ndarray) -> float:
    s = chain.sched
    mean = torch.from_numpy(s.sqrt_alpha_bar[s.T] * x0_real)
    return float(gaussian_kl(mean, 1.0 - s.alpha_bar[s.T], torch.zeros_like(mean), 1.0).sum()) / LOG2


def _push_x0(coder: _Coder, chain: ImageChain, x_K: torch.Tensor, pixels: np.ndarray) -> float:
    """The progressive codec's exact x_0 layer (pixelmodel: context means, per-image parameters on the stack)."""
    h, w, _ = pixels.shape
    rows = pixelmodel.mean_rows(chain.x0_hat(x_K, chain.levels[-1].t), h, w)
    params = pixelmodel.fit(pixels, rows)
    pixelmodel.push(coder.ans, pixels, rows, params)
    return pixelmodel.code_length_bits(pixels, rows, params)


def _encode_image(coder: _Coder, chain: ImageChain, x0: torch.Tensor, pixels: np.ndarray, order: str) -> ImageStat:
    L, K = chain.levels, len(chain.levels)
    x0_real = x0.flatten()[chain.real].double().numpy()
    real = lambda j, n: n * L[j - 1].delta  # noqa: E731  exact float64 latent values of level j
    n: list = [None] * (K + 1)
    kl = 0.0
    start = coder.ans.num_bits()
    if order == "bitswap":
        n[K] = pop_q(coder.ans, chain.bridge_mean(K, x0_real), L[K - 1].bridge[2], L[K - 1].delta)
        coder.popped(f"pop {K}")
        dec_bits = _push_x0(coder, chain, chain.latent(K, n[K]), pixels)
        coder.mark("push x0")
        for j in range(K - 1, 0, -1):
            n[j] = pop_q(coder.ans, chain.bridge_mean(j, real(j + 1, n[j + 1])), L[j - 1].bridge[2], L[j - 1].delta)
            coder.popped(f"pop {j}")
            x_j = chain.latent(j, n[j])
            mu = chain.prior_mean(j + 1, x_j, chain.x0_hat(x_j, L[j - 1].t))
            push_p(coder.ans, n[j + 1], mu, L[j].p_var, L[j].delta)
            coder.mark(f"push {j + 1}")
            kl += _step_kl(chain, j + 1, real(j, n[j]), x0_real, mu)
    else:
        prev = chain.x_T_real
        for j in range(1, K + 1):
            n[j] = pop_q(coder.ans, chain.rev_mean(j, prev, x0_real), L[j - 1].rev[2], L[j - 1].delta)
            coder.popped(f"pop {j}")
            prev = real(j, n[j])
        dec_bits = _push_x0(coder, chain, chain.latent(K, n[K]), pixels)
        coder.mark("push x0")
        for j in range(K, 1, -1):
            x_prev = chain.latent(j - 1, n[j - 1])
            mu = chain.prior_mean(j, x_prev, chain.x0_hat(x_prev, L[j - 1].t_prev))
            push_p(coder.ans, n[j], mu, L[j - 1].p_var, L[j - 1].delta)
            coder.mark(f"push {j}")
            kl += _step_kl(chain, j, real(j - 1, n[j - 1]), x0_real, mu)
    mu = chain.prior_mean(1, chain.x_T, chain.x0_hat(chain.x_T, chain.sched.T))
    push_p(coder.ans, n[1], mu, L[0].p_var, L[0].delta)
    coder.mark("push 1")
    kl += _step_kl(chain, 1, chain.x_T_real, x0_real, mu)
    prior = _prior_kl(chain, x0_real)
    return ImageStat(chain.dims, float(coder.ans.num_bits() - start), prior + kl + dec_bits, kl, dec_bits)


def _decode_image(coder: _Coder, chain: ImageChain, h: int, w: int, order: str,
                  every_step: bool, index: int) -> Iterator[DecodedStep]:
    L, K = chain.levels, len(chain.levels)
    n: list = [None] * (K + 1)
    x_prev = chain.x_T
    for j in range(1, K + 1):
        x0h = chain.x0_hat(x_prev, L[j - 1].t_prev)
        if every_step:
            yield DecodedStep(index, L[j - 1].t_prev, tiles_to_uint8(x0h, h, w))
        n[j] = pop_p(coder.ans, chain.prior_mean(j, x_prev, x0h), L[j - 1].p_var, L[j - 1].delta)
        if order == "bitswap" and j > 1:
            lv = L[j - 2]
            push_q(coder.ans, n[j - 1], chain.bridge_mean(j - 1, n[j] * L[j - 1].delta), lv.bridge[2], lv.delta)
        x_prev = chain.latent(j, n[j])
    x0h = chain.x0_hat(x_prev, L[K - 1].t)
    if every_step:
        yield DecodedStep(index, L[K - 1].t, tiles_to_uint8(x0h, h, w))
    pixels = pixelmodel.pop(coder.ans, pixelmodel.mean_rows(x0h, h, w))
    x0, _ = to_tiles(pixels, chain.mask.shape[-1])
    x0_real = x0.flatten()[chain.real].double().numpy()
    if order == "bitswap":
        push_q(coder.ans, n[K], chain.bridge_mean(K, x0_real), L[K - 1].bridge[2], L[K - 1].delta)
    else:
        for j in range(K, 0, -1):
            prev = chain.x_T_real if j == 1 else n[j - 1] * L[j - 2].delta
            push_q(coder.ans, n[j], chain.rev_mean(j, prev, x0_real), L[j - 1].rev[2], L[j - 1].delta)
    yield DecodedStep(index, 0, pixels)


# ---- sets -------------------------------------------------------------------------------------------------------
def _check_settings(model, s: BitsBackSettings) -> None:
    if s.order not in ORDERS:
        raise InputError(f"unknown bits-back order {s.order!r}; choose from {ORDERS}")
    if not 1 <= s.t_end < model.diffusion.T:
        raise InputError(f"t_end must be in 1..{model.diffusion.T - 1}")
    if not MIN_GRID_BITS <= s.grid_bits <= MAX_GRID_BITS:
        raise InputError(f"grid_bits must be in {MIN_GRID_BITS}..{MAX_GRID_BITS}")
    if not 1 <= s.n_steps <= model.diffusion.T or not 0 <= s.seed < 1 << 63:
        raise InputError("n_steps must be in 1..T and the seed a non-negative 63-bit integer")


def encode_set(images: list[np.ndarray], model, settings: BitsBackSettings = BitsBackSettings(), *,
               source_modes: list[str] | None = None, names: list[str] | None = None,
               progress: Callable[[int, int], None] | None = None, trace: list | None = None) -> EncodeResult:
    """Code uint8 (H, W, 3) images on one stack; the decoder gets them back in list order.

    trace (a list) receives (label, stack bits) after every stack operation of the final attempt."""
    start = time.perf_counter()
    if not images:
        raise InputError("no images to encode")
    settings = settings.resolved(len(images))
    _check_settings(model, settings)
    for im in images:
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or min(im.shape[:2]) < 1:
            raise InputError("expected non-empty (H, W, 3) uint8 images")
    modes = list(source_modes or ["RGB"] * len(images))
    if names is not None and (len(names) != len(images) or any("\n" in nm for nm in names)):
        raise InputError("need one name per image, without newlines")
    sched, profile, kind, steps, levels = schedule_for(model, settings.n_steps, settings.t_end, settings.grid_bits)
    if not check_levels(levels):
        raise InputError(f"grid_bits={settings.grid_bits} is too fine for this schedule (alphabets over 2^15 symbols)")
    tile = model.unet_config.resolution
    network = ExactNetwork(model) if settings.exact_network else model
    tiles = [to_tiles(im, tile) for im in images]
    sizes = [(im.shape[1], im.shape[0], container.SOURCE_MODES.index(m)) for im, m in zip(images, modes)]
    base = seed_estimate(settings.order, settings.grid_bits, len(levels), sizes)
    for attempt in range(MAX_ATTEMPTS + 1):
        seed = seed_words(settings.seed, base * 4 ** attempt)
        if trace is not None:
            trace.clear()
        coder = _Coder(seed, check=True, trace=trace)
        stats: list = [None] * len(images)
        unet = 0.0
        try:
            for i in reversed(range(len(images))):
                t0 = time.perf_counter()
                x0, mask = tiles[i]
                chain = ImageChain(network, sched, levels, kind, profile, mask, channel.mix_seed(settings.seed, i))
                stats[i] = _encode_image(coder, chain, x0, images[i], settings.order)
                stats[i].seconds = time.perf_counter() - t0
                unet += chain.unet_seconds
                if progress:
                    progress(len(images) - i, len(images))
            break
        except _SeedExhausted:
            continue
    else:
        raise InputError("bits-back seed requirement did not converge")
    words = coder.ans.get_compressed()
    common = min(len(words), len(seed))
    diff = np.nonzero(words[:common] != seed[:common])[0]
    bottom = int(diff[0]) if len(diff) else common
    crc = 0
    for im in images:
        crc = zlib.crc32(np.ascontiguousarray(im).tobytes(), crc)
    header = container.Header(
        mode=container.MODE_BITSBACK, model_id=codec_model_id(model, profile), width=sizes[0][0],
        height=sizes[0][1], source_mode=sizes[0][2], tile=tile, n_steps=settings.n_steps, t_end=settings.t_end,
        steps_present=len(levels), lossless=1, budget_bits=container.DEFAULTS["budget_bits"],
        margin_bits=container.DEFAULTS["margin_bits"], prior_kind=container.PRIOR_KINDS.index(kind),
        seed=settings.seed, pixel_crc=crc, payload_bytes=0, version=container.version_for(settings.exact_network))
    sub = SubHeader(ORDERS.index(settings.order), settings.grid_bits, attempt, len(seed) - bottom, sizes, names)
    payload = sub.pack(header) + entropy.words_to_bytes(words[bottom:])
    header.payload_bytes = len(payload)
    data = container.pack(header, payload)
    return EncodeResult(data, header, stats, 32 * (len(seed) - bottom), len(data) - 4 * (len(words) - bottom),
                        settings, time.perf_counter() - start, unet, attempt + 1)


def encode_image(pixels: np.ndarray, model, settings: BitsBackSettings = BitsBackSettings(),
                 source_mode: str = "RGB") -> EncodeResult:
    return encode_set([pixels], model, settings, source_modes=[source_mode])


class Decoder:
    """Decodes a bits-back file image by image; after :meth:`steps` is exhausted, ``recovered_seed`` holds the
    stack that is left (checked equal to the regenerated initial words) and ``images`` the decoded pixels."""

    def __init__(self, data: bytes, model, limits=None):
        self.file = read_file(data, model, limits)
        self.model = model
        f = self.file
        n_seed = seed_estimate(f.order, f.sub.grid_bits, len(f.chain[4]), f.sub.sizes) * 4 ** f.sub.attempt
        self.seed = seed_words(f.header.seed, n_seed)
        if f.sub.consumed > len(self.seed):
            raise FormatError("corrupt bits-back header (seed words)")
        self.recovered_seed: np.ndarray | None = None
        self.images: list[np.ndarray] = []

    def steps(self, every_step: bool = False,
              progress: Callable[[int, int], None] | None = None) -> Iterator[DecodedStep]:
        """Each image (t = 0) in order, preceded by x^_0 at every coded t when every_step (Algorithm 4 order)."""
        f, h = self.file, self.file.header
        sched, profile, kind, _, levels = f.chain
        coder = _Coder(np.concatenate([self.seed[:len(self.seed) - f.sub.consumed], f.stored]), check=False)
        crc = 0
        for i, (w, ht, _) in enumerate(f.sub.sizes):
            _, mask = to_tiles(np.zeros((ht, w, 3), np.uint8), h.tile)
            network = ExactNetwork(self.model) if h.exact_network else self.model
            chain = ImageChain(network, sched, levels, kind, profile, mask, channel.mix_seed(h.seed, i))
            try:
                for step in _decode_image(coder, chain, ht, w, f.order, every_step, i):
                    if step.t == 0:
                        crc = zlib.crc32(np.ascontiguousarray(step.pixels).tobytes(), crc)
                        self.images.append(step.pixels)
                    yield step
            except (OutOfRange, KeyError, ValueError) as e:
                raise DeterminismError(f"image {i}: the decoder's stack went out of step ({type(e).__name__}): "
                                       "this machine did not reproduce the encoder's network outputs") from None
            if progress:
                progress(i + 1, len(f.sub.sizes))
        self.recovered_seed = coder.ans.get_compressed()
        if not np.array_equal(self.recovered_seed, self.seed):
            raise DeterminismError("the initial bits did not come back intact: this machine did not reproduce the "
                                   "encoder's network outputs (different model build, torch version or numerics)")
        if crc & 0xFFFF != h.pixel_crc & 0xFFFF:
            raise DeterminismError("decoded pixels fail the checksum")


def decode_set(data: bytes, model, every_step: bool = False,
               progress: Callable[[int, int], None] | None = None, limits=None) -> Iterator[DecodedStep]:
    """Generator over :meth:`Decoder.steps`; the seed and CRC checks run after the last image."""
    return Decoder(data, model, limits).steps(every_step, progress)


def decode_images(data: bytes, model, progress: Callable[[int, int], None] | None = None,
                  limits=None) -> DecodedSet:
    """Every image of a bits-back file (checks complete before returning). limits: container.limits.DecodeLimits."""
    dec = Decoder(data, model, limits)
    for _ in dec.steps(progress=progress):
        pass
    sub = dec.file.sub
    return DecodedSet(dec.images, [container.SOURCE_MODES[m] for _, _, m in sub.sizes], sub.names)

__all__ = ["BitsBackSettings", "Decoder", "DecodedSet", "DecodedStep", "EncodeResult", "ImageStat", "ORDERS",
           "decode_images", "decode_set", "encode_image", "encode_set", "file_info", "read_file", "seed_words"]
