"""The bounds on what a request may build (``core.limits``): pure checks on schemas and numbers."""

from __future__ import annotations

import pytest

from modelpkg.core.errors import InvalidInputError
from modelpkg.core.limits import (
    GrammarLimits,
    ModelShape,
    check_context_memory,
    check_format,
    check_grammar_size,
    check_num_predict,
    kv_cache_bytes,
)

LIMITS = GrammarLimits()
OFF = GrammarLimits(max_repeat=0, max_total_repeat=0, max_depth=0, max_nodes=0, max_pattern=0, max_grammar_bytes=0)


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


def test_ordinary_schemas_pass():
    for fmt in (None, "", "json", {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                                  "tags": {"type": "array", "maxItems": 10}}},
                {"type": "string", "pattern": "^[a-z]{1,20}$"}, nested(10)):
        check_format(fmt, LIMITS)


@pytest.mark.parametrize("keyword", ["maxItems", "minItems", "maxLength", "minLength", "maxProperties",
                                     "minProperties"])
def test_each_repetition_keyword_is_bounded(keyword):
    check_format({keyword: 500}, LIMITS)
    with pytest.raises(InvalidInputError) as e:
        check_format({"type": "object", "properties": {"a": {keyword: 501}}}, LIMITS)
    assert e.value.message == f"format: {keyword} 501 is more than this server allows (500)"
    check_format({keyword: 10**9}, OFF)


def test_repetitions_add_up():
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 400} for i in range(6)}}
    with pytest.raises(InvalidInputError) as e:
        check_format(schema, LIMITS)
    assert "add up to 2400" in e.value.message and "(2000)" in e.value.message


def test_bad_repetition_values_are_refused():
    for value in (-1, "5", True, [3]):
        with pytest.raises(InvalidInputError):
            check_format({"maxItems": value}, LIMITS)


def test_depth_and_size_are_bounded_without_recursion():
    check_format(nested(63), LIMITS)
    with pytest.raises(InvalidInputError) as e:
        check_format(nested(64), LIMITS)
    assert e.value.message == "format: a schema nested 65 levels deep, which is more than this server allows (64)"
    with pytest.raises(InvalidInputError):  # far past Python's stack: still one clean error
        check_format(nested(100_000), LIMITS)
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(3000)}}
    with pytest.raises(InvalidInputError) as e:
        check_format(wide, LIMITS)
    assert "2000 objects" in e.value.message


def test_patterns_are_bounded():
    with pytest.raises(InvalidInputError):
        check_format({"type": "string", "pattern": "a" * 1001}, LIMITS)
    for pattern in ("^a{5000}$", "^a{1,5000}$", "^(ab){501,}$"):
        with pytest.raises(InvalidInputError):
            check_format({"type": "string", "pattern": pattern}, LIMITS)
    check_format({"type": "string", "pattern": "^a{1,5000}$"}, OFF)


def test_the_grammar_text_is_bounded():
    check_grammar_size("root ::= x\n" * 100, LIMITS)
    with pytest.raises(InvalidInputError) as e:
        check_grammar_size("x" * (256 * 1024 + 1), LIMITS)
    assert "262145 bytes" in e.value.message
    check_grammar_size("x" * (256 * 1024 + 1), OFF)


def test_num_predict_bounds():
    for ok in (-2, -1, 0, 1, 4096, 2**31 - 1):
        check_num_predict(ok)
    for bad in (-3, 2**31, 10**30):
        with pytest.raises(InvalidInputError):
            check_num_predict(bad)


def test_kv_cache_estimate_and_memory_check():
    gemma = ModelShape(n_layer=18, n_head_kv=1, key_length=256, value_length=256)
    assert kv_cache_bytes(gemma, 1) == 18 * 512 * 2
    assert kv_cache_bytes(gemma, 4096) == 75_497_472
    assert kv_cache_bytes(gemma, 4096, n_seq=8) == 8 * 75_497_472
    check_context_memory(gemma, 4096, 1, 100 * 1024 * 1024)
    with pytest.raises(InvalidInputError) as e:
        check_context_memory(gemma, 32768, 4, 1024 * 1024 * 1024)
    assert e.value.message == ("num_ctx 32768 x 4 parallel sequences needs a 2304 MiB KV cache; "
                               "1024 MiB of memory is available")
