"""Stack serialization: trimmed top word round trips, prefixes keep whole words, and sizes add up."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ddpmcodec.entropy import rans as entropy


@given(st.lists(st.integers(0, 2 ** 32 - 1), max_size=12), st.integers(1, 2 ** 32 - 1))
@settings(max_examples=200, deadline=None)
def test_stack_bytes_round_trip_and_prefixes(body, top):
    words = np.array(body + [top], dtype=np.uint32)  # top of stack last; a coder's top word is never 0
    data = entropy.stack_to_bytes(words)
    assert len(data) == 4 * len(body) + (top.bit_length() + 7) // 8
    np.testing.assert_array_equal(entropy.bytes_to_stack(data, len(data)), words)
    for n in range(len(words) + 1):
        cut = entropy.stack_prefix_bytes(len(data), n)
        got = entropy.bytes_to_stack(data[:cut], len(data))
        np.testing.assert_array_equal(got, words[len(words) - n:])  # the top n words, nothing half-read


def test_fresh_coder_round_trip_through_trimmed_bytes():
    coder = entropy.new_coder()
    law = entropy.zipf_model(64, 3.0)
    symbols = np.array([0, 5, 63, 1, 2, 0, 9], dtype=np.int32)
    coder.encode_reverse(symbols, law)
    data = entropy.stack_to_bytes(coder.get_compressed())
    decoder = entropy.new_coder(entropy.bytes_to_stack(data, len(data)))
    np.testing.assert_array_equal(decoder.decode(law, len(symbols)), symbols)
    assert entropy.stack_to_bytes(np.zeros(0, np.uint32)) == b""
