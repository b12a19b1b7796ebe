"""Fuzzing the decoder and the CLI (issue 9, item 3): mutated real files and crafted headers with valid checks.

THE PROPERTY, for every mutant or crafted file: decoding either raises a CodecError subclass (a clean error), or
every frame it yields is pixel-identical to a reference frame (t, pixels) of an original file: never another
exception, never a wrong image, never a hang (per-request alarm), never runaway memory (the decoder runs in a worker
subprocess whose address space is limited to its start-up size + 2 GiB; see ddpmcodec.testing_fuzz). Crafted headers
have no original: a clean error is required, or (for fields that keep the file decodable) a decode that finishes
within the limits. Through the CLI (subprocess): exit 0 or 3 with a PNG equal to a reference frame, or exit 1 with
exactly one `error: ` line; a strict prefix of a file is partial and must not exit 0; `truncate`'s output must decode
to reference frames only.

Regression cases live in tests/fuzz_corpus/*.json as *recipes* (source kind + mutation ops with anchored offsets, or
crafted Header fields), not bytes, so they survive format changes; test_corpus replays every one.

Default run: deterministic (derandomize) and small; `pytest -m slow tests/test_fuzz_decoder.py` runs deeper.
"""
from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from ddpmcodec.codec.progressive import CodecSettings, encode
from ddpmcodec.testing import make_tiny_model, smooth_image
from ddpmcodec.testing_fuzz import DecodeWorker, build_file, craft_file, one_line_error, png_digest, run_cli

CORPUS = Path(__file__).parent / "fuzz_corpus"
SETTINGS = CodecSettings(n_steps=8, budget_bits=6, margin_bits=2)
SOURCES = ("lossless", "lossy", "lossless_b", "portable")  # portable: format 8, the U-Net on integer grids
FAST = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
NO_SHRINK = (Phase.explicit, Phase.generate)  # expensive examples: report the first failure as found


# ---- fixture: tiny model, original files, their reference frames, a decode worker -----------------------------------
class Env:
    def __init__(self, root: Path):
        self.root = root
        make_tiny_model(root, resolution=8, seed=0)
        self.model_path = root / "tiny-r8-s0.safetensors"
        from ddpmcodec.network.model_io import load_model

        model = load_model(self.model_path)
        from ddpmcodec.codec.progressive import codec_model_id
        from ddpmcodec.schedule.steps import profile_for

        self.model_id, self.tile = codec_model_id(model, profile_for(model)), model.unet_config.resolution
        a, b = smooth_image(10, 12, seed=0), smooth_image(8, 8, seed=1)
        self.sources = {
            "lossless": encode(a, model, SETTINGS, stop_at_t=0).data,
            "lossy": encode(a, model, SETTINGS, stop_at_t=50).data,
            "lossless_b": encode(b, model, SETTINGS, stop_at_t=0).data,
            "portable": encode(b, model, replace(SETTINGS, exact_network=True), stop_at_t=0).data,
        }
        self.worker = DecodeWorker(self.model_path, mem_limit=2 << 30, timeout=10.0)
        self.refs: set[tuple[int, str]] = set()  # (t, digest) of every frame of every original
        self.ref_frames: dict[str, list] = {}
        for name, data in self.sources.items():
            reply = self.worker.request("decode", data)
            assert reply["status"] == "ok", reply
            self.ref_frames[name] = reply["frames"]
            self.refs |= {(t, d) for t, _, d in reply["frames"]}
        assert all(self.ref_frames[k][-1][0] == 0 for k in ("lossless", "lossless_b", "portable"))
        self.digests = {d for _, d in self.refs}
        self.n = 0

    def build(self, recipe: dict) -> bytes:
        return build_file(recipe, self.sources, self.model_id, self.tile)

    def path(self, data: bytes, stem: str = "case") -> Path:
        self.n += 1
        p = self.root / f"{stem}{self.n}.ddpm"
        p.write_bytes(data)
        return p


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("fuzz"))
    yield e
    e.worker.close()


# ---- the properties -------------------------------------------------------------------------------------------------
def library_violations(env: Env, data: bytes, crafted: bool = False, timeout: float | None = None) -> list[str]:
    """What is wrong with decoding `data` through the library (decode_progressive, step_table); [] when fine."""
    bad = []
    reply = env.worker.request("decode", data, timeout=timeout)
    for t, nbytes, d in [] if crafted else reply["frames"]:  # a crafted header has no original to compare with
        if (t, d) not in env.refs:
            bad.append(f"decode yielded a wrong frame at t={t} (bytes_read={nbytes}; final status {reply['status']})")
            break
    if reply["status"] not in ("ok", "codec_error"):
        bad.append(f"decode: {reply['status']} {reply.get('type')}: {reply.get('msg')}\n{reply.get('tb', '')}")
    table = env.worker.request("table", data, timeout=timeout)
    if table["status"] not in ("ok", "codec_error"):
        bad.append(f"step_table: {table['status']} {table.get('type')}: {table.get('msg')}\n{table.get('tb', '')}")
    # truncate (what `ddpmcodec truncate` does without --stop-at: keep every complete step) must not launder damage
    cut = env.worker.request("truncate", data, timeout=timeout)
    if cut["status"] not in ("ok", "codec_error"):
        bad.append(f"truncate: {cut['status']} {cut.get('type')}: {cut.get('msg')}\n{cut.get('tb', '')}")
    elif cut["status"] == "ok" and not crafted:
        new = base64.b64decode(cut["data"])
        if new != data:
            again = env.worker.request("decode", new, timeout=timeout)
            wrong = [t for t, _, d in again["frames"] if (t, d) not in env.refs]
            if wrong or again["status"] not in ("ok", "codec_error"):
                bad.append(f"truncate's output decodes to {'a wrong frame at t=%d' % wrong[0] if wrong else ''} "
                           f"(status {again['status']} {again.get('msg', '')})")
    return bad


def cli_violations(env: Env, data: bytes, source: bytes | None, commands=("decode", "info", "truncate"),
                   crafted: bool = False) -> list[str]:
    """What is wrong with `decode`, `info` and `truncate` on `data` through the CLI; [] when fine. source: the
    original a mutant came from (None for a crafted file, whose decoded images have no reference to match)."""
    bad = []
    model = ["--model", env.model_path]
    f = env.path(data)
    strict_prefix = source is not None and len(data) < len(source) and source.startswith(data)

    def expect_clean(res, what):
        if res["rc"] == 1 and one_line_error(res):
            return True
        if res["rc"] not in (0, 3) or "Traceback" in res["stderr"]:
            bad.append(f"{what}: exit {res['rc']}, stderr: {res['stderr'][-1500:]}")
        return False

    if "decode" in commands:
        out = f.with_suffix(".png")
        res = run_cli(["decode", f, "-o", out, "-f", *model, "-q"])
        if not expect_clean(res, "decode") and res["rc"] in (0, 3):
            if not out.is_file() or (not crafted and png_digest(out) not in env.digests):
                bad.append(f"decode exited {res['rc']} with an image that is no reference frame")
            if strict_prefix and res["rc"] == 0:
                bad.append("decode exited 0 on a strict prefix of a file (a partial file must exit 3)")
    if "info" in commands:
        expect_clean(run_cli(["info", f, *model]), "info")
    if "truncate" in commands:
        cut = f.with_name(f.stem + "_cut.ddpm")
        res = run_cli(["truncate", f, "-o", cut, "-f", *model])
        if not expect_clean(res, "truncate") and res["rc"] == 0:
            if not cut.is_file():
                bad.append("truncate exited 0 without writing its output")
            elif not crafted:
                new = cut.read_bytes()
                reply = env.worker.request("decode", new)
                wrong = [fr for fr in reply["frames"] if (fr[0], fr[2]) not in env.refs]
                if wrong:
                    bad.append(f"truncate wrote a file that decodes to a wrong frame at t={wrong[0][0]} "
                               f"(status {reply['status']}); truncated file b64={base64.b64encode(new).decode()}")
                elif reply["status"] not in ("ok", "codec_error"):
                    bad.append(f"decode of truncate's output: {reply['status']} {reply.get('msg')}")
    return bad


# ---- strategies -----------------------------------------------------------------------------------------------------
_at = st.integers(-8, 700)
_anchor = st.sampled_from(["start", "payload", "payload", "end"])
_bytes = st.binary(min_size=1, max_size=12).map(bytes.hex)
OPS = st.one_of(
    st.fixed_dictionaries({"op": st.just("flip"), "at": _at, "anchor": _anchor, "xor": st.integers(1, 255)}),
    st.fixed_dictionaries({"op": st.just("delete"), "at": _at, "anchor": _anchor, "n": st.integers(1, 12)}),
    st.fixed_dictionaries({"op": st.just("insert"), "at": _at, "anchor": _anchor, "bytes": _bytes}),
    st.fixed_dictionaries({"op": st.just("duplicate"), "at": _at, "anchor": _anchor, "n": st.integers(1, 40)}),
    st.fixed_dictionaries({"op": st.just("truncate"), "len": _at, "anchor": _anchor}),
    st.fixed_dictionaries({"op": st.just("splice"), "at": _at, "anchor": _anchor, "other": st.sampled_from(SOURCES),
                           "from": _at, "from_anchor": _anchor}),
    st.fixed_dictionaries({"op": st.just("append"), "bytes": _bytes}),
    st.fixed_dictionaries({"op": st.just("set"), "at": _at, "anchor": _anchor, "bytes": _bytes}),
)
MUTANTS = st.fixed_dictionaries({"kind": st.just("mutant"), "source": st.sampled_from(SOURCES),
                                 "ops": st.lists(OPS, min_size=1, max_size=3)})


def _absurd(*values, lo=None, hi=None):
    choices = st.sampled_from(values)
    return st.one_of(st.none(), choices, st.integers(lo, hi)) if lo is not None else st.one_of(st.none(), choices)


CRAFTED_FIELDS = st.fixed_dictionaries({
    "width": _absurd(1, 255, 4096, 8192, 65535, 65536, 65537, 1 << 20, 1 << 31, lo=1, hi=40),
    "height": _absurd(1, 255, 4096, 8192, 65535, 65536, 65537, 1 << 20, 1 << 31, lo=1, hi=40),
    "tile": _absurd(0, 1, 7, 9, 16, 4096, 4097, 1 << 20),
    "n_steps": _absurd(0, 1, 2, 999, 1000, 1001, (1 << 20) - 1, 1 << 20, 1 << 32, lo=0, hi=20),
    "t_end": _absurd(0, 1, 50, 998, 999, 1000, 1001, 5000, (1 << 20) - 1, 1 << 40, lo=0, hi=20),
    "steps_present": _absurd(0, 1, 9, 10, 100, 1 << 20, 1 << 40, lo=0, hi=12),
    "lossless": _absurd(0, 1),
    "budget_bits": _absurd(1, 14, 15, lo=1, hi=15),
    "margin_bits": _absurd(0, 12, 13, 15, lo=0, hi=15),
    "prior_kind": _absurd(0, 1),
    "source_mode": _absurd(0, 1),
    "mode": _absurd(0, 1, 2, 3),
    "seed": _absurd(1, 2 ** 32 - 1, 2 ** 64),
    "pixel_crc": _absurd(0, 0xFFFF),
}).map(lambda d: {k: v for k, v in d.items() if v is not None})
CRAFTED_PAYLOAD = st.fixed_dictionaries({
    "declared": st.one_of(st.none(), st.sampled_from([0, 1, 3, 4, 5, 8, 100, 1 << 20, 1 << 22]), st.integers(0, 900)),
    "keep": st.one_of(st.none(), st.integers(0, 700)),
    "fill": st.sampled_from(["source", "source", "zeros", "ones"]),
})
CRAFTED = st.fixed_dictionaries({"kind": st.just("crafted"), "base": st.sampled_from(SOURCES),
                                 "fields": CRAFTED_FIELDS, "payload": CRAFTED_PAYLOAD})


def _build(env: Env, recipe: dict) -> bytes | None:
    try:
        return env.build(recipe)
    except ValueError:  # pack() refuses the field values: nothing to decode
        return None


def _note(recipe: dict) -> None:
    """Print the recipe with a failing hypothesis example (a JSON line to paste into tests/fuzz_corpus)."""
    try:
        note(json.dumps(recipe))
    except InvalidArgument:  # called outside a hypothesis test
        pass


# ---- 1. mutations of real files through the library -----------------------------------------------------------------
def _check_mutant(env: Env, recipe: dict) -> None:
    _note(recipe)
    data = env.build(recipe)
    bad = library_violations(env, data)
    assert not bad, "\n".join(bad)


@given(recipe=MUTANTS)
@settings(max_examples=100, **FAST)
@example(recipe={"kind": "mutant", "source": "lossless", "ops": [{"op": "delete", "at": 3, "anchor": "payload",
                                                                  "n": 3}]})
def test_mutants_decode_to_reference_frames_or_clean_error(env, recipe):
    _check_mutant(env, recipe)


@pytest.mark.slow
@given(recipe=MUTANTS)
@settings(max_examples=3000, **FAST)
def test_mutants_deep(env, recipe):
    _check_mutant(env, recipe)


# ---- 2. every prefix (a partial download) ---------------------------------------------------------------------------
@pytest.mark.parametrize("source,stride", [("lossy", 4), ("lossless", 17), ("lossless_b", 11), ("portable", 11)])
def test_every_prefix_decodes_to_reference_frames(env, source, stride):
    data = env.sources[source]
    failures = []
    for n in list(range(0, len(data), stride)) + [len(data) - 1]:
        bad = library_violations(env, data[:n])
        if bad:
            failures.append(f"prefix of {n} bytes: {bad[0]}")
    assert not failures, f"{len(failures)} failing prefixes, first: " + "\n".join(failures[:3])


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES)
def test_every_prefix_deep(env, source):
    data = env.sources[source]
    failures = [f"prefix {n}: {bad[0]}" for n in range(len(data)) if (bad := library_violations(env, data[:n]))]
    assert not failures, f"{len(failures)} failing prefixes, first: " + "\n".join(failures[:3])


# ---- 3. crafted headers with valid checks ---------------------------------------------------------------------------
def _check_crafted(env: Env, recipe: dict, timeout: float) -> None:
    _note(recipe)
    data = _build(env, recipe)
    if data is None:
        return
    bad = library_violations(env, data, crafted=True, timeout=timeout)
    assert not bad, "\n".join(bad)


@given(recipe=CRAFTED)
@settings(max_examples=60, phases=NO_SHRINK, **FAST)
def test_crafted_headers_clean_error_or_bounded_decode(env, recipe):
    _check_crafted(env, recipe, timeout=5.0)


@pytest.mark.slow
@given(recipe=CRAFTED)
@settings(max_examples=600, **FAST)
def test_crafted_headers_deep(env, recipe):
    _check_crafted(env, recipe, timeout=10.0)


# ---- 4. the CLI (subprocesses: ~2.5 s each, so few examples by default) ---------------------------------------------
def _check_cli(env: Env, recipe: dict, commands) -> None:
    _note(recipe)
    data = env.build(recipe)
    source = env.sources.get(recipe.get("source")) if recipe["kind"] == "mutant" else None
    bad = cli_violations(env, data, source, commands, crafted=recipe["kind"] == "crafted")
    assert not bad, "\n".join(bad)


CLI_RECIPES = [
    {"kind": "mutant", "source": "lossless", "ops": [{"op": "delete", "at": 3, "anchor": "payload", "n": 3}]},
    {"kind": "mutant", "source": "lossy", "ops": [{"op": "truncate", "len": -30, "anchor": "end"}]},
]


@pytest.mark.parametrize("recipe", CLI_RECIPES, ids=["delete3_in_payload", "lossy_minus_30_bytes"])
def test_cli_on_mutants(env, recipe):
    _check_cli(env, recipe, ("decode", "truncate"))


def test_cli_on_crafted_header(env):
    """A crafted header (valid checks) claiming 65536x65536: decode and info exit 1 with one line, no traceback."""
    data = env.build({"kind": "crafted", "base": "lossless", "fields": {"width": 65536, "height": 65536}})
    bad = cli_violations(env, data, None, ("decode", "info"), crafted=True)
    assert not bad, "\n".join(bad)


@pytest.mark.slow
@given(recipe=MUTANTS)
@settings(max_examples=60, **FAST)
def test_cli_on_mutants_deep(env, recipe):
    _check_cli(env, recipe, ("decode", "info", "truncate"))


# ---- 5. the regression corpus ---------------------------------------------------------------------------------------
def _corpus(slow: bool | None = None, cli: bool = False):
    out = []
    for p in sorted(CORPUS.glob("*.json")):
        case = json.loads(p.read_text())
        if (slow is None or bool(case.get("slow")) == slow) and (not cli or case.get("cli")):
            out.append(p)
    return out


def _replay(env: Env, path: Path) -> None:
    """expect: prefix_or_error (mutants: clean error or reference frames only), no_crash (crafted: clean error or a
    decode that finishes within the limits), clean_error (decode must raise a CodecError)."""
    case = json.loads(path.read_text())
    recipe = case["recipe"]
    crafted = recipe["kind"] == "crafted"
    data = env.build(recipe)
    timeout = case.get("timeout", 10.0)
    bad = library_violations(env, data, crafted=crafted, timeout=timeout)
    if case.get("expect") == "clean_error":
        reply = env.worker.request("decode", data, timeout=timeout)
        if reply["status"] != "codec_error":
            bad.append(f"expected a clean error (CodecError) from decode, got {reply['status']} "
                       f"{reply.get('type')}: {reply.get('msg')}")
    assert not bad, f"{case.get('why', '')}\n" + "\n".join(bad)


@pytest.mark.parametrize("path", _corpus(slow=False), ids=lambda p: p.stem)
def test_corpus(env, path):
    """Replay a recorded recipe through the library (decode_progressive and step_table, in the worker)."""
    _replay(env, path)


@pytest.mark.slow
@pytest.mark.parametrize("path", _corpus(slow=True), ids=lambda p: p.stem)
def test_corpus_slow_cases(env, path):
    _replay(env, path)


@pytest.mark.slow
@pytest.mark.parametrize("path", _corpus(cli=True), ids=lambda p: p.stem)
def test_corpus_cli(env, path):
    """Replay the recipes marked "cli": true through the CLI subprocesses (decode / info / truncate)."""
    case = json.loads(path.read_text())
    recipe = case["recipe"]
    source = None if recipe["kind"] == "crafted" else env.sources[recipe["source"]]
    bad = cli_violations(env, env.build(recipe), source,
                         tuple(case.get("cli_commands", ("decode", "info", "truncate"))), crafted=source is None)
    assert not bad, f"{case.get('why', '')}\n" + "\n".join(bad)


def test_corpus_recipes_apply(env):
    """Every recipe still builds a file (guards the corpus itself against format drift)."""
    for path in _corpus():
        case = json.loads(path.read_text())
        assert env.build(case["recipe"]), path.name


def test_crafted_file_helper_round_trips(env):
    """craft_file with no changes reproduces the original exactly (the crafting itself is sound)."""
    for name, data in env.sources.items():
        assert craft_file(data, {}, model_id=env.model_id, tile=env.tile) == data, name
