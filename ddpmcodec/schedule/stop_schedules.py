"""Schedules made for a lossy file's stop point (format version 6's one-byte stop schedule).

A file that will only ever be decoded down to x_S codes better with its own few equal-KL steps from T to S than
with the prefix of the 50-step lossless schedule: fewer steps spend fewer per-step and per-chunk overheads on the
way down (`eval.schedule_probe`). The container stores (n_steps, t_end) of such a file in one byte when t_end is
on container.header.STOP_GRID and n_steps in STOP_STEP_COUNTS; this module is the encoder's rule for choosing them.
"""
from __future__ import annotations

import bisect

from ddpmcodec.container.header import STOP_GRID
from ddpmcodec.errors import InputError

SCHEDULE_CHOICES = ("auto", "stop", "progressive")  # CodecSettings.schedule / encode --schedule

# The encoder's rule: the step count for a stop at t >= the bound (the first row that applies). Chosen on training
# originals 2000-2015 with eval.schedule_probe (docs/results/schedule_probe_v5_train16.json, format 5, the extra
# header bytes discounted): the best count of 4-24 was 4 at S = 440 (+0.78 dB at equal size), 8 or 12 at S = 274
# (+0.60), 12 at S = 191 (+0.48) and 16 at S = 142 (+0.23).
STEPS_FOR_STOP = ((400, 4), (230, 8), (150, 12), (0, 16))
# `auto` uses a stop schedule for stops at or above this t only: at S = 99 and 64 no count beat the default
# schedule's prefix on those originals.
AUTO_MIN_STOP = 120


def grid_stop(stop_t: int) -> int | None:
    """The last grid timestep at or below stop_t (None below the grid)."""
    i = bisect.bisect_right(STOP_GRID, stop_t)
    return STOP_GRID[i - 1] if i else None


def steps_for_stop(t_end: int) -> int:
    """The rule's step count for a file that ends at t_end (one of STOP_STEP_COUNTS)."""
    return next(n for bound, n in STEPS_FOR_STOP if t_end >= bound)


def stop_schedule(stop_t: int, choice: str, T: int) -> tuple[int, int] | None:
    """(n_steps, t_end) of the schedule a lossy file ending at the first step at or below stop_t gets under
    `choice` (SCHEDULE_CHOICES), or None for the default schedule's prefix. T: the model's number of timesteps."""
    if choice not in SCHEDULE_CHOICES:
        raise InputError(f"unknown schedule {choice!r}; choose from {', '.join(SCHEDULE_CHOICES)}")
    if choice == "progressive" or not 0 < stop_t < T:  # t >= T: a file of x_T alone, as every schedule starts
        return None
    t_end = grid_stop(stop_t)
    if t_end is None or (choice == "auto" and t_end < AUTO_MIN_STOP):
        return None
    return steps_for_stop(t_end), t_end
