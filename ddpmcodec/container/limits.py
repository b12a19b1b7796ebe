"""Limits on what a .ddpm file may make a decoder do, checked before any allocation or network evaluation.

A header is small and checked, but a crafted one with valid checks can still claim a 65536x65536 image or a
schedule that takes hours. Two rules bound the work and memory a file can demand:
- pixels: width x height (summed over a set's images) <= max_pixels (default 2^24, a 4096x4096 photo);
- work per byte: the network evaluations a decode needs (tiles x (coded steps + 1)) <= base_evals + evals_per_byte
  x file size. Real files need far less than one per byte beyond the base (a lossless 32x32 file: 51 evaluations for
  ~1.7 kB; a 512x512 lossless file ~13,000 for ~400 kB; a lossy 4096x4096 file stopped at t=592 ~49,000 for ~115 kB);
  a file that claims a large image and holds little trips it (a 4096x4096 file of x_T alone needs --max-pixels).
A user who decodes a genuinely huge image raises `max_pixels` (CLI: --max-pixels), which also lifts the
work-per-byte rule: the user vouches for the file.
"""
from __future__ import annotations

from dataclasses import dataclass

from ddpmcodec.errors import FormatError

DEFAULT_MAX_PIXELS = 1 << 24
MAX_SIDE = 1 << 16  # the header's own plausibility limit per side


@dataclass(frozen=True)
class DecodeLimits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    evals_per_byte: float | None = 1.0  # None: no work-per-byte rule
    base_evals: int = 4096

    @classmethod
    def raised(cls, max_pixels: int) -> "DecodeLimits":
        """What --max-pixels N gives: a higher pixel limit and no work-per-byte rule."""
        return cls(max_pixels=max_pixels, evals_per_byte=None)

    def check_pixels(self, pixels: int, what: str) -> None:
        if pixels > self.max_pixels:
            raise FormatError(f"{what} has {pixels:,} pixels, more than this decoder's limit of {self.max_pixels:,} "
                              "(a damaged or crafted header? for a genuinely large image pass --max-pixels)")

    def check_work(self, evaluations: int, file_bytes: int) -> None:
        if self.evals_per_byte is None:
            return
        allowed = self.base_evals + self.evals_per_byte * file_bytes
        if evaluations > allowed:
            raise FormatError(f"the header asks for {evaluations:,} network evaluations from a {file_bytes:,}-byte "
                              f"file (at most {allowed:,.0f} for its size): a damaged or crafted header? "
                              "pass --max-pixels to decode it anyway")
