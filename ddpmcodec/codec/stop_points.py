"""Operations on .ddpm files that need no network evaluation: step table, truncation, summaries.

The chunk indices are coded with fixed laws (entropy.py), so the payload parses without running the U-Net; only
the schedule (from the model's profile) is needed to label steps with their timestep t.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, replace


from ddpmcodec.container import blocks
from ddpmcodec.container import header as container
from ddpmcodec.container.limits import DecodeLimits
from ddpmcodec.codec.progressive import CodecSettings, EncodeResult, StepStat, encode, truncated_file, truncated_size
from ddpmcodec.codec.decoding import StreamReader
from ddpmcodec.errors import InputError
from ddpmcodec.schedule.stop_schedules import stop_schedule


@dataclass
class StepEntry:
    index: int  # coded steps decoded to reach this point (0 = x_T only)
    t: int  # timestep held after it (0: exact image)
    bytes: int  # size of the valid file that stops here (what `truncate` writes)
    raw_bytes: int  # length of the plain prefix of this file that decodes to here (e.g. a partial download)


def _read_table(data: bytes, model, limits: DecodeLimits | None = None) -> tuple[StreamReader, list[StepEntry]]:
    reader = StreamReader(data, model, limits)
    parsed, h, chain = reader.parsed, reader.parsed.header, reader.chain
    first = parsed.header_bytes + blocks.stored_prefix_for(0, h.payload_bytes)  # a prefix needs a checked block
    table = [StepEntry(0, chain.steps[0], truncated_size(chain, []), first)]
    for k in range(h.steps_present):
        if not reader.pop_step()[2]:
            break
        table.append(StepEntry(k + 1, chain.steps[k + 1], truncated_size(chain, reader.symbols),
                               reader.raw_prefix_bytes()))
    if h.lossless and parsed.complete:
        table.append(StepEntry(h.steps_present + 1, 0, len(data), len(data)))
    return reader, table


def step_table(data: bytes, model, limits: DecodeLimits | None = None) -> tuple[container.Parsed, list[StepEntry]]:
    """Every stop point the file offers, with the bytes it needs. Entries past a cut-off prefix are omitted."""
    reader, table = _read_table(data, model, limits)
    return reader.parsed, table


def choose_stop(table: list[StepEntry], stop_at_t: int | None = None, stop_at_bytes: int | None = None) -> StepEntry:
    """The entry a decoder stops at: first t <= stop_at_t (t=0 means lossless), or the last that fits the bytes."""
    if stop_at_t is not None:
        for e in table:
            if e.t <= stop_at_t:
                return e
        return table[-1]
    if stop_at_bytes is not None:
        fitting = [e for e in table if e.bytes <= stop_at_bytes]
        if not fitting:
            raise InputError(f"{stop_at_bytes} bytes is less than the header ({table[0].bytes} bytes)")
        return fitting[-1]
    return table[-1]


def truncate(data: bytes, model, stop_at_t: int | None = None, stop_at_bytes: int | None = None,
             limits: DecodeLimits | None = None) -> bytes:
    """A shorter valid file that decodes exactly like `data` stopped at the chosen step.

    The kept steps' symbols are re-pushed onto a fresh stack (no network needed), so the result is byte for byte
    what `encode --stop-at` writes and carries no leftover coder state from the dropped steps. Only verified bytes
    are read: a partial download yields the steps its checked blocks hold, and a damaged file is refused.
    """
    reader, table = _read_table(data, model, limits)
    entry = choose_stop(table, stop_at_t, stop_at_bytes)
    if entry.t == 0 or (entry.index == reader.parsed.header.steps_present and not reader.parsed.header.lossless
                        and reader.parsed.complete):
        return data
    return truncated_file(reader.chain, reader.symbols[:entry.index])


def budget_bytes(target_bpp: float, height: int, width: int) -> int:
    """The largest file size, in whole bytes, within target_bpp for a height x width image."""
    return int(target_bpp * height * width / 8)


def fit_to_bpp(data: bytes, steps, model, target_bpp: float, height: int, width: int) -> bytes:
    """The longest valid prefix file of an encode within target_bpp (steps: EncodeResult.steps), as
    `encode --target-bpp` writes it; InputError if even the smallest file is larger."""
    budget = budget_bytes(target_bpp, height, width)
    fitting = [s for s in steps if s.bytes_if_stopped <= budget]
    if not fitting:
        raise InputError(f"--target-bpp {target_bpp} is below the smallest possible file "
                         f"({8 * steps[0].bytes_if_stopped / (height * width):.3f} bpp)")
    return data if fitting[-1] is steps[-1] else truncate(data, model, stop_at_bytes=budget)


def bitsback_summary_lines(data: bytes, model=None, limits: DecodeLimits | None = None) -> list[str]:
    """`info` for a bits-back file (header and sub-header), verified against the model when one is given."""
    from ddpmcodec.bitsback.format import file_info

    i = file_info(data, model, limits)
    dims = sum(w * h * 3 for w, h in i["sizes"])
    return [f"format       .ddpm v{container.VERSION}, bits-back (lossless, not progressive)",
            f"images       {i['images']}: " + ", ".join(f"{w}x{h}" for w, h in i["sizes"][:8])
            + (" ..." if i["images"] > 8 else ""),
            f"schedule     {i['n_steps']} coded steps down to t={i['t_end']}, order {i['order']}, "
            f"grid {i['grid_bits']}",
            f"size         {i['bytes']} bytes (headers {i['overhead_bytes']}, stored seed words "
            f"{i['seed_words_stored']}), {8 * i['bytes'] / dims:.3f} bits/dim"]


def summary_lines(parsed: container.Parsed, table: list[StepEntry] | None) -> list[str]:
    h = parsed.header
    dims = h.width * h.height * 3
    size = parsed.header_bytes + len(parsed.payload)  # what decodes: the whole file, or a partial file's verified part
    if parsed.complete:
        size = parsed.header_bytes + blocks.stored_size(h.payload_bytes)  # block checks included: the file's length
    n_checks = (size - parsed.header_bytes - len(parsed.payload)) // blocks.CHECK_BYTES
    checks = f", block checks {blocks.CHECK_BYTES * n_checks}" if n_checks else ""
    if h.end_checked():
        checks += ", file check in the coder's end state" + (" (verified)" if parsed.verified and parsed.complete
                                                             else "")
    layer = f" + exact x_0 layer (lossless, {'learned' if h.learned_x0 else 'classic'})" if h.lossless else ""
    lines = [f"format       .ddpm v{h.version}, {'progressive' if h.mode == 0 else 'bits-back'}"
             f"{'' if parsed.complete else ' (PARTIAL FILE: payload cut off)'}"
             f"{'' if parsed.verified else ' (not verified: read without a model)'}",
             (f"image        {h.width}x{h.height} {container.SOURCE_MODES[h.source_mode]}, tiles {h.tile}px"
              if h.width else f"image        one tile of the model, {container.SOURCE_MODES[h.source_mode]}"),
             (f"model id     {h.model_id.hex()}" if parsed.verified else f"model tag    {h.model_id[0]:02x}"),
             f"schedule     {h.n_steps} equal-KL steps down to t={h.t_end}"
             f"{' (made for its stop)' if h.stop_schedule_code() is not None else ''}, "
             f"prior {container.PRIOR_KINDS[h.prior_kind]}",
             f"channel      PFR, {h.budget_bits}-bit chunks, 2^{h.budget_bits + h.margin_bits} candidates, seed {h.seed}",
             ("network      U-Net on integer grids (portable: the same numbers on every machine)" if h.exact_network
              else "network      U-Net in float32" + (" (exact pixels need the encoder's CPU kernels or GPU; see "
                                                        "--portable)" if h.lossless else "")),
             f"content      {h.steps_present} coded steps{layer}",
             f"size         {size} bytes (header {parsed.header_bytes}{checks}), "
             + (f"{8 * size / (h.width * h.height):.3f} bpp" if h.width
                else "bpp: the tile size comes with the model")]
    if table:
        lines.append(f"{'step':>6} {'t':>6} {'bytes':>9} {'bpp':>8} {'bits/dim':>9}")
        for e in table:
            lines.append(f"{e.index:>6} {e.t:>6} {e.bytes:>9} {8 * e.bytes / (h.width * h.height):>8.4f} "
                         f"{8 * e.bytes / dims:>9.4f}")
    return lines


MAX_WALK = 6  # grid stops (about 6.6% of t apart) a --target-bpp search tries each way from the prefix's stop
DEEP_T_END = 4  # how deep a lossy-only chain goes when a byte budget falls past a default file's last lossy stop


def stop_of(res: EncodeResult, data: bytes) -> StepStat:
    """The encoder's statistics of the stop point that `data` (res.data or a truncation of it) ends at."""
    h = container.unpack(data).header
    return res.steps[-1] if h.lossless else res.steps[h.steps_present]


def encode_within_bpp(pixels, model, settings: CodecSettings, target_bpp: float, *, source_mode: str = "RGB",
                      progress=None, deep_t_end: int = DEEP_T_END,
                      base: EncodeResult | None = None) -> tuple[bytes, EncodeResult, StepStat]:
    """`encode --target-bpp`: the best valid file within target_bpp, as (bytes, the encode it comes from, its stop).

    A default file's lossy stops end at t_end (10 with the learned x_0 layer), and its next point is the lossless
    file. When the budget falls in between and t_end was left to the model, a lossy-only chain down to deep_t_end is
    encoded as well, and whichever file within the budget has the higher PSNR is kept. When the budget falls inside
    the default chain and settings.schedule allows, stop-schedule files (stop_schedules) of every step count are
    tried near that prefix's stop, and the best file within the budget wins.
    The default file is encoded only to its second step past the budget. base: the encode of these pixels with
    replace(settings, schedule="progressive"), complete or with past_bytes <= the budget, if the caller has it
    (several targets for one image)."""
    height, width = pixels.shape[:2]
    budget = budget_bytes(target_bpp, height, width)
    res = base or encode(pixels, model, replace(settings, schedule="progressive"), source_mode=source_mode,
                         past_bytes=budget, progress=progress)
    data = fit_to_bpp(res.data, res.steps, model, target_bpp, height, width)
    stop = stop_of(res, data)
    deepest_lossy = res.steps[res.header.steps_present]
    if stop.t > 0 and stop is not deepest_lossy:
        return _best_stop_schedule(pixels, model, settings, budget, (data, res, stop), source_mode)
    if settings.t_end is None and stop is deepest_lossy and res.header.t_end > deep_t_end:
        deep = encode(pixels, model, replace(settings, t_end=deep_t_end), source_mode=source_mode,
                      stop_at_t=deep_t_end)
        try:
            deep_data = fit_to_bpp(deep.data, deep.steps, model, target_bpp, height, width)
        except InputError:  # its first stop is already too large
            return data, res, stop
        deep_stop = stop_of(deep, deep_data)
        if deep_stop.psnr > stop.psnr:
            return deep_data, deep, deep_stop
    return data, res, stop


def _best_stop_schedule(pixels, model, settings: CodecSettings, budget: int,
                        best: tuple[bytes, EncodeResult, StepStat], source_mode: str):
    """`best` (a default file's prefix) or a stop-schedule file within budget bytes with a higher PSNR. For each step
    count the container can name, the deepest grid stop whose file fits is found by walking the grid from the default
    prefix's stop (files grow as the stop deepens; at most MAX_WALK encodes each way), every candidate encoded."""
    data, res, stop = best
    if not settings.schedule_left_to_encoder():
        return best
    T = model.diffusion.T
    grid = [t for t in container.STOP_GRID if stop_schedule(t, settings.schedule, T)]  # ascending t
    if not grid or stop.t < grid[0]:  # the prefix already reaches deeper than any stop schedule in use
        return best
    start = bisect.bisect_right(grid, stop.t) - 1  # the last grid stop with t <= the prefix's t

    def fitting(n_steps: int, i: int) -> EncodeResult | None:
        own = encode(pixels, model, replace(settings, n_steps=n_steps, t_end=grid[i]), source_mode=source_mode,
                     stop_at_t=grid[i])
        return own if len(own.data) <= budget else None

    for n_steps in container.STOP_STEP_COUNTS:
        found, i = fitting(n_steps, start), start
        step = -1 if found else 1  # deeper (smaller t, larger files) while it fits, else shallower until it does
        for _ in range(MAX_WALK):
            i += step
            if not 0 <= i < len(grid):
                break
            own = fitting(n_steps, i)
            if step < 0 and own is None:
                break
            found = own or found
            if step > 0 and own is not None:
                break
        if found is not None and found.steps[-1].psnr > stop.psnr:
            data, res, stop = found.data, found, found.steps[-1]
    return data, res, stop
