"""rANS entropy models on constriction's AnsCoder (a stack: the last thing pushed is popped first).

The progressive stream is one stack. Symbols are pushed in reverse decoding order, so the decoder pops
x_T's step first; the words are stored top-first in the file, which makes every prefix hold the early steps.
Every model here is a function of integers and fixed tables only, never of floating-point network outputs,
except the pixel model, whose parameters are quantized (mean grid, scale index) before use.
"""
from __future__ import annotations

import math
from functools import lru_cache

import constriction
import numpy as np
import torch

from ddpmcodec.errors import FormatError, one_line


_MODELS = constriction.stream.model
_AnsCoder = constriction.stream.stack.AnsCoder

LOG_KL_MIN, LOG_KL_MAX = -64, 255  # quantized log2(step KL in bits) * 8
PIXEL_MEAN_GRID = 8  # pixel means are snapped to 1/8 grey level
SIGMA_TABLE_SIZE = 64


def new_coder(words: np.ndarray | None = None, initial_state: int | None = None):
    """An AnsCoder; with words (uint32, top of stack last) a decoder; with initial_state (1..2^32-1) an encoder whose
    stack starts from that state instead of empty (the end state of container.header's end-checked files)."""
    if initial_state is not None:
        return _AnsCoder(np.array([initial_state], dtype=np.uint32))
    if words is None:
        return _AnsCoder()
    try:
        return _AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
    except ValueError as exc:  # e.g. "compressed data never ends in a zero word": not a coder's output
        raise FormatError(f"corrupt payload ({one_line(exc)})") from None


@lru_cache(maxsize=16)  # a file uses one candidate count and few KLs; 2^20 candidates take ~8 MB per law
def zipf_model(n_candidates: int, kl_bits: float):
    """Truncated Zipf law P(k) ~ (k+1)^-lambda on 0..n-1, lambda = 1 + 1/(KL + 1/e + 1) (Li & El Gamal)."""
    lam = 1.0 + 1.0 / (kl_bits + math.exp(-1.0) + 1.0)
    p = np.arange(1, n_candidates + 1, dtype=np.float64) ** (-lam)
    return _MODELS.Categorical(p / p.sum(), perfect=False)


@lru_cache(maxsize=256)
def zipf_min_bits(n_candidates: int, kl_bits: float) -> float:
    """The cheapest index under :func:`zipf_model` (index 0) in bits: a lower bound on any index's code length."""
    lam = 1.0 + 1.0 / (kl_bits + math.exp(-1.0) + 1.0)
    total = float((np.arange(1, n_candidates + 1, dtype=np.float64) ** (-lam)).sum())
    return math.log2(total) - 0.01  # margin for the coder's quantized probabilities


def zipf_kl_for(q_log_kl: int, n_chunks: int, budget_bits: int) -> float:
    """The KL per chunk the index code assumes: the step's transmitted KL shared by its chunks, capped at budget."""
    total = 2.0 ** (q_log_kl / 8.0)
    return float(min(budget_bits, max(0.25, round(total / n_chunks * 4) / 4)))


_LOG_KL_MODEL = _MODELS.QuantizedLaplace(LOG_KL_MIN, LOG_KL_MAX)


LOG_KL_SCALE = 1.5  # Laplace scale of a step's log-KL around the previous step's (1/8 octaves)


def push_log_kl(coder, values: np.ndarray, predictions: np.ndarray) -> None:
    """Push quantized log-KL values (int) with a Laplace around integer predictions (scale LOG_KL_SCALE).

    Consecutive steps of an equal-KL schedule carry similar KL: on dev images 0-3 the change from one step to the
    next had mean |d| 1.3 (in 1/8 octaves). Scale 1.5 instead of 6 made lossless files 0.027 bits/dim smaller on
    dev images 0-7 (`python -m eval.codec_bench --limit 8` before and after: 4.679 -> 4.652)."""
    coder.encode_reverse(np.asarray(values, np.int32), _LOG_KL_MODEL, np.asarray(predictions, np.float64),
                         np.full(len(values), LOG_KL_SCALE))


def pop_log_kl(coder, prediction: int) -> int:
    return int(coder.decode(_LOG_KL_MODEL, np.array([float(prediction)]), np.array([LOG_KL_SCALE]))[0])


def quantize_log_kl(kl_bits: float) -> int:
    q = int(math.ceil(8.0 * math.log2(max(kl_bits, 2.0 ** (LOG_KL_MIN / 8.0)))))
    return int(min(max(q, LOG_KL_MIN), LOG_KL_MAX))


def sigma_from_index(index: np.ndarray | int) -> np.ndarray:
    """Pixel-model standard deviation in grey levels for 6-bit table indices (0.25 .. ~60 levels)."""
    return 0.25 * 2.0 ** (np.asarray(index, np.float64) / 8.0)


def _pixel_cdf(edges: np.ndarray, mean_rows: np.ndarray, sigma_index: np.ndarray) -> np.ndarray:
    means = np.clip(np.asarray(mean_rows, np.float64) / PIXEL_MEAN_GRID - 0.5, 0.0, 255.0)
    sigma = sigma_from_index(sigma_index)
    return torch.special.ndtr(torch.from_numpy((edges - means[..., None]) / sigma[..., None])).numpy()


def pixel_probs(mean_rows: np.ndarray, sigma_index: np.ndarray) -> np.ndarray:
    """(N, 256) float64 probabilities of pixel values for N quantized means (rows m: mean m/8 - 1/2 grey levels)
    and scale indices: eq. 13 in grey levels, N(mean, sigma^2) over [k - 0.5, k + 0.5], edge bins to +-inf."""
    cdf = _pixel_cdf(np.arange(257, dtype=np.float64) - 0.5, mean_rows, sigma_index)
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0
    probs = np.maximum(np.diff(cdf, axis=1), 1e-12)
    return probs / probs.sum(axis=1, keepdims=True)


def quantize_pixel_means(means: np.ndarray) -> np.ndarray:
    """Float means in grey levels -> integer mean rows (grid 1/8, clipped)."""
    q = np.floor((np.asarray(means, np.float64) + 0.5) * PIXEL_MEAN_GRID + 0.5)
    return np.clip(q, 0, 256 * PIXEL_MEAN_GRID).astype(np.int64)


def pixel_bits(pixels: np.ndarray, mean_rows: np.ndarray, sigma_index: np.ndarray | int) -> float:
    """Code length in bits of flat uint8 pixels under :func:`pixel_probs` (up to its 1e-12 floor)."""
    k = pixels.astype(np.float64)
    sigma_index = np.broadcast_to(sigma_index, k.shape)
    cdf = _pixel_cdf(np.stack([k - 0.5, k + 0.5], -1), mean_rows, sigma_index)
    lo = np.where(k == 0, 0.0, cdf[:, 0])
    hi = np.where(k == 255, 1.0, cdf[:, 1])
    return float(-np.log2(np.maximum(hi - lo, 1e-12)).sum())


def words_to_bytes(words: np.ndarray) -> bytes:
    """Stack words (top last) -> file bytes, top word first, little-endian."""
    return np.ascontiguousarray(words[::-1], dtype="<u4").tobytes()


def bytes_to_words(data: bytes) -> np.ndarray:
    """File bytes (top first) -> stack words (top last). A trailing partial word is dropped."""
    n = len(data) // 4
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    return np.frombuffer(data[: 4 * n], dtype="<u4")[::-1].astype(np.uint32)


def top_word_bytes(total_bytes: int) -> int:
    """Bytes of the (trimmed) top word in a stack of `total_bytes` written by :func:`stack_to_bytes` (1..4)."""
    return total_bytes - 4 * ((total_bytes - 1) // 4) if total_bytes else 0


def stack_to_bytes(words: np.ndarray) -> bytes:
    """Like :func:`words_to_bytes`, but the top word keeps only its significant bytes (at least one).

    The top word is the high end of the coder's final state, so this saves 1.5 bytes per file on average.
    """
    if len(words) == 0:
        return b""
    top = int(words[-1])
    n_top = max(1, (top.bit_length() + 7) // 8)
    return top.to_bytes(n_top, "little") + words_to_bytes(words[:-1])


def bytes_to_stack(data: bytes, total_bytes: int) -> np.ndarray:
    """Inverse of :func:`stack_to_bytes` for the first len(data) of `total_bytes` (a prefix keeps whole words)."""
    n_top = top_word_bytes(total_bytes)
    if len(data) < n_top or n_top == 0:
        return np.zeros(0, dtype=np.uint32)
    top = np.array([int.from_bytes(data[:n_top], "little")], dtype=np.uint32)
    return np.concatenate([bytes_to_words(data[n_top:]), top])


def stack_prefix_bytes(total_bytes: int, words: int) -> int:
    """Bytes of a :func:`stack_to_bytes` file holding its top `words` words."""
    if words <= 0:
        return 0
    return top_word_bytes(total_bytes) + 4 * (words - 1)
