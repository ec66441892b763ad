"""Tests for modelpkg.core.modelfile: Ollama's Modelfile grammar, typed parameters, and format/parse.

Cases follow ollama-behaviour.md section 1 and Ollama's parser/parser_test.go.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpkg.core.errors import ModelfileError
from modelpkg.core.modelfile import (
    DEPRECATED_PARAMETERS,
    KEYWORDS,
    PARAMETER_TYPES,
    ROLES,
    Instruction,
    Modelfile,
    convert_parameter,
    format,
    format_parameter_value,
    parse,
)

I = Instruction  # noqa: E741 - short in tables


def only(text: str) -> Instruction:
    """The one instruction of ``FROM base`` + text."""
    instructions = parse("FROM base\n" + text).instructions
    assert len(instructions) == 2
    return instructions[1]


def error(text: str) -> ModelfileError:
    with pytest.raises(ModelfileError) as info:
        parse(text)
    assert "\n" not in str(info.value)
    return info.value


# --- instructions, keywords, comments -------------------------------------------------------


def test_parse_minimal():
    assert parse("FROM llama3.2").instructions == (I("from", "llama3.2"),)


def test_every_keyword_parses():
    text = "\n".join(
        f"{k.upper()} {'n ' if k == 'parameter' else 'user ' if k == 'message' else ''}v"
        for k in KEYWORDS)
    assert [i.keyword for i in parse(text).instructions] == list(KEYWORDS)


def test_keywords_are_case_insensitive():
    m = parse("from a\nSyStEm hi\nparameter Top_K 3")
    assert m.instructions == (I("from", "a"), I("system", "hi"), I("parameter", "3", "Top_K"))


def test_from_may_stand_anywhere():
    m = parse("PARAMETER what the \nFROM lemons make lemonade ")
    assert m.instructions == (I("parameter", "the", "what"), I("from", "lemons make lemonade"))
    assert m.from_ == "lemons make lemonade"


def test_first_from_is_from_():
    assert parse("FROM a\nFROM b").from_ == "a"


def test_comments_only_at_line_start():
    m = parse("# comment\n  \t# indented comment\nFROM foo # not a comment\n")
    assert m.instructions == (I("from", "foo # not a comment"),)


def test_blank_lines_and_indentation_skipped():
    assert parse("\n\n   \t\n\t  FROM x\n\n").from_ == "x"


def test_instruction_lines_are_recorded():
    m = parse('# c\nFROM x\n\nSYSTEM """a\nb\n"""\nPARAMETER seed 1\n')
    assert [i.line for i in m.instructions] == [2, 4, 7]


def test_line_is_not_part_of_equality():
    assert I("from", "x", line=3) == I("from", "x", line=9)


# --- values: trimming, quoting, multi-line ------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("SYSTEM plain words", "plain words"),
    ("SYSTEM      padded    ", "padded"),
    ("SYSTEM \ttabbed\t", "tabbed"),
    ("SYSTEM a\tb", "a\tb"),
    ('SYSTEM "  kept  "', "  kept  "),
    ('SYSTEM """  kept  """   ', "  kept  "),
    ('SYSTEM ""', ""),
    ('SYSTEM """"""', ""),
    ("SYSTEM   ", ""),
    ('SYSTEM "\'"', "'"),
    ("SYSTEM 'single quotes are literal'", "'single quotes are literal'"),
    (r'SYSTEM "no \"escapes\" \n here"', r'no \"escapes\" \n here'),
    ('SYSTEM say "hi" now', 'say "hi" now'),
    ('SYSTEM abc"', 'abc"'),
    ('SYSTEM "a"""', 'a""'),
    ('SYSTEM """a"""b"""', 'a"""b'),
    ('SYSTEM """\'\'"\'""\'""\'"\'\'\'\'\'""\'""\'"""', '\'\'"\'""\'""\'"\'\'\'\'\'""\'""\''),
    ("SYSTEM 你好👋", "你好👋"),
])
def test_value(text, value):
    assert only(text).value == value


def test_triple_quoted_multiline_keeps_everything():
    text = 'SYSTEM """\n  This is a\n\tmultiline "system".  \n"""\n'
    assert only(text).value == '\n  This is a\n\tmultiline "system".  \n'


def test_triple_quote_may_close_on_a_text_line():
    assert only('SYSTEM """This is a\nmultiline system."""').value == "This is a\nmultiline system."


def test_double_quotes_span_lines_too():
    assert only('SYSTEM "line one\nline two"').value == "line one\nline two"


def test_message_multiline():
    m = parse('FROM foo\nMESSAGE system """\nYou parse files.\n"""\n')
    assert m.messages == [{"role": "system", "content": "\nYou parse files.\n"}]


def test_from_value_is_unquoted():
    assert parse('FROM "     model 1"').from_ == "     model 1"


def test_hash_inside_a_value_is_text():
    assert only('SYSTEM """\n# not a comment\n"""').value == "\n# not a comment\n"


def test_text_after_closing_quote_keeps_the_value_open():
    e = error('FROM x\nSYSTEM """abc""" def\nPARAMETER seed 1\n')
    assert e.line == 2 and 'unclosed """' in e.reason


def test_prose_after_a_block_is_an_unknown_instruction():
    e = error('FROM x\nSYSTEM """\nBe brief.\n"""\nAnswer in English.\n')
    assert e.line == 5 and "unknown instruction 'Answer'" in e.reason


# --- encodings, line breaks, non-printables -------------------------------------------------


def test_crlf_values_and_line_numbers():
    m = parse('FROM x\r\nSYSTEM """a\r\nb"""\r\nPARAMETER seed 1\r\n')
    assert m.system == "a\r\nb"
    assert [i.line for i in m.instructions] == [1, 2, 4]


def test_crlf_error_line_is_not_doubled():
    assert error("FROM x\r\nSYSTEM y\r\nBAD z\r\n").line == 3


def test_lone_cr_is_a_line_break():
    assert parse("FROM x\rSYSTEM y\r").instructions == (I("from", "x"), I("system", "y"))


def test_utf8_bom_is_skipped():
    assert parse("\ufeffFROM x").from_ == "x"


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbfFROM x\nSYSTEM \xe4\xbd\xa0\xe5\xa5\xbd",
    "\ufeffFROM x\nSYSTEM 你好".encode("utf-16-le"),
    "\ufeffFROM x\nSYSTEM 你好".encode("utf-16-be"),
])
def test_bytes_are_decoded_like_ollama(data):
    assert parse(data).instructions == (I("from", "x"), I("system", "你好"))


def test_non_printables_are_dropped_from_values():
    assert only("SYSTEM a\x07b\u00a0c\u200dd\x00e").value == "abcde"


def test_non_printable_before_a_keyword_is_ignored():
    # Ollama's name state takes any first rune and drops it if it is not printable.
    assert parse("\x07FROM x").from_ == "x"


# --- errors ---------------------------------------------------------------------------------


def test_unknown_instruction_lists_the_valid_ones():
    e = error("FROM foo\nBADCOMMAND param1 value1\n")
    assert e.line == 2
    assert e.reason.startswith("unknown instruction 'BADCOMMAND'")
    assert "FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE, MESSAGE, DRAFT, RENDERER, " \
           "PARSER, REQUIRES" in e.reason


def test_unknown_instruction_suggests_a_keyword():
    assert error("FORM x").hint == "did you mean FROM?"


def test_prose_gets_no_keyword_suggestion():
    assert "#" in error("FROM x\nAnswer briefly.").hint


@pytest.mark.parametrize("text", ["FROM: x", 'SYSTEM"x"', "FROM1 x", "ÜBER x", "-x y"])
def test_keyword_must_be_letters_then_a_space(text):
    assert error("FROM ok\n" + text).line == 2


@pytest.mark.parametrize("text", ["SYSTEM", "SYSTEM\n", "FROM", "TEMPLATE\r\n", "PARAMETER\n"])
def test_keyword_alone_on_its_line(text):
    e = error("FROM ok\n" + text)
    assert e.line == 2 and e.reason.startswith("missing value after ")


def test_missing_parameter_value():
    e = error("FROM foo\nPARAMETER param1\n")
    assert e.line == 2 and e.reason == "missing value for PARAMETER param1"


@pytest.mark.parametrize("text", ["PARAMETER \n", "PARAMETER  num_ctx 4"])
def test_missing_parameter_name(text):
    assert error("FROM x\n" + text).reason == "missing parameter name after PARAMETER"


@pytest.mark.parametrize("text, shown", [
    ("PARAMETER num-ctx 4", "'num-ctx'"),
    ('PARAMETER "stop" x', "'\"stop\"'"),
    ("PARAMETER tëmp 1", "'tëmp'"),
])
def test_invalid_parameter_name(text, shown):
    e = error("FROM x\n" + text)
    assert e.line == 2 and e.reason == f"invalid parameter name {shown}"


@pytest.mark.parametrize("role", ["tool", "User", "badguy", "user1", "user:", "SYSTEM"])
def test_invalid_message_role(role):
    e = error(f"FROM foo\nMESSAGE {role} hi\n")
    assert e.line == 2 and e.reason.startswith("invalid message role ")


def test_role_case_hint():
    assert error("FROM foo\nMESSAGE User hi").hint == "roles are lowercase"


@pytest.mark.parametrize("text", ["MESSAGE system\n", "MESSAGE system"])
def test_missing_message_content(text):
    assert error("FROM foo\n" + text).reason == "missing content for MESSAGE system"


def test_missing_message_role():
    assert error("FROM foo\nMESSAGE  user hi").reason == "missing message role after MESSAGE"


@pytest.mark.parametrize("text, quote", [
    ('SYSTEM """This is a multiline system.""', '"""'),
    ('SYSTEM "', '"'),
    ('SYSTEM "hello" world', '"'),
    ('SYSTEM """abc""" def', '"""'),
    ('SYSTEM """', '"""'),
    ('SYSTEM """"""x', '"""'),
])
def test_unclosed_quote(text, quote):
    e = error("FROM foo\n" + text + "\nPARAMETER seed 1\n")
    assert e.line == 2 and e.reason.startswith(f"unclosed {quote} quote")


@pytest.mark.parametrize("text", ["", "# just a comment\n", "\n\n", "PARAMETER param1 value1"])
def test_no_from_line(text):
    e = error(text)
    assert e.reason == "no FROM line" and e.line is None


def test_errors_carry_hints():
    assert error("FROM x\nSYSTEM").hint
    assert error("FROM x\nMESSAGE tool x").hint


# --- convenience views ----------------------------------------------------------------------


def test_views():
    m = parse(
        "FROM base\nTEMPLATE t1\nTEMPLATE t2\nSYSTEM s\nADAPTER a1\nADAPTER a2\n"
        "LICENSE MIT\nLICENSE Apache\nMESSAGE user hi\nMESSAGE assistant hello\n")
    assert (m.template, m.system, m.adapter) == ("t2", "s", "a2")
    assert m.licenses == ["MIT", "Apache"]
    assert m.messages == [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]
    assert [i.value for i in m.get("TEMPLATE")] == ["t1", "t2"]


def test_views_when_absent():
    m = parse("FROM base")
    assert (m.template, m.system, m.adapter, m.licenses, m.messages) == (None, None, None, [], [])


def test_from_without_from_raises():
    with pytest.raises(ModelfileError):
        _ = Modelfile(()).from_


# --- parameters -----------------------------------------------------------------------------


def params(text: str) -> dict:
    return parse("FROM x\n" + text).parameters()


def test_parameters_are_typed():
    assert params(
        "PARAMETER num_ctx 4096\nPARAMETER temperature 0.7\nPARAMETER use_mmap false\n"
        "PARAMETER stop <|eot_id|>\n"
    ) == {"num_ctx": 4096, "temperature": 0.7, "use_mmap": False, "stop": ["<|eot_id|>"]}


def test_stop_lines_append_and_keep_duplicates():
    got = params('PARAMETER stop a\nPARAMETER seed 1\nPARAMETER stop "b "\nPARAMETER stop a')
    assert got["stop"] == ["a", "b ", "a"]


def test_other_repeated_parameters_last_wins():
    assert params("PARAMETER top_k 1\nPARAMETER top_k 2") == {"top_k": 2}


@pytest.mark.parametrize("text, value", [
    ("stop ### User:", "### User:"),
    ("stop ### User: ", "### User:"),
    ('stop "### User:"', "### User:"),
    ('stop "### User: "', "### User: "),
    ('stop """### User:"""', "### User:"),
    ('stop """### User:\n"""', "### User:\n"),
    ("stop </s>", "</s>"),
])
def test_stop_values(text, value):
    assert params("PARAMETER " + text) == {"stop": [value]}


def test_deprecated_parameters_are_dropped_with_a_warning():
    m = parse("FROM x\nPARAMETER mirostat 2\nPARAMETER seed 3\nPARAMETER use_mlock true")
    assert m.parameters() == {"seed": 3}
    assert m.warnings() == ["line 2: parameter 'mirostat' is deprecated and ignored",
                            "line 4: parameter 'use_mlock' is deprecated and ignored"]


def test_every_deprecated_name_is_dropped():
    text = "".join(f"PARAMETER {name} 1\n" for name in sorted(DEPRECATED_PARAMETERS))
    assert params(text) == {}


def test_unknown_parameter_names_its_line():
    with pytest.raises(ModelfileError) as info:
        params("PARAMETER seed 1\nPARAMETER numa true")
    assert info.value.reason == "unknown parameter 'numa'" and info.value.line == 3


def test_parameter_names_are_case_sensitive():
    with pytest.raises(ModelfileError, match="unknown parameter 'Temperature'") as info:
        params("PARAMETER Temperature 1")
    assert "'temperature'" in info.value.hint


def test_wrong_type_names_parameter_type_and_line():
    with pytest.raises(ModelfileError) as info:
        params("PARAMETER num_ctx 4k")
    assert info.value.reason == "invalid int value for parameter 'num_ctx': '4k'"
    assert info.value.line == 2


def test_convert_parameter_unknown():
    with pytest.raises(ModelfileError, match=r"^Modelfile: unknown parameter 'x'$"):
        convert_parameter("x", "1")


def test_convert_parameter_deprecated_is_refused():
    with pytest.raises(ModelfileError, match="deprecated"):
        convert_parameter("mirostat", "1")


def test_convert_stop_returns_a_list():
    assert convert_parameter("stop", " a ") == [" a "]


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("-1", -1), ("+5", 5), ("007", 7), ("0", 0),
    ("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -(2**63)),
])
def test_int_values(text, value):
    assert convert_parameter("num_ctx", text) == value


@pytest.mark.parametrize("text", [
    "4k", "4096.0", "0x100", "1_000", " 4", "", "+", "1e3", "٣", "9223372036854775808",
])
def test_invalid_int_values(text):
    with pytest.raises(ModelfileError, match="int value"):
        convert_parameter("seed", text)


@pytest.mark.parametrize("text, value", [
    ("0.7", 0.7), ("1", 1.0), ("-2.5", -2.5), (".5", 0.5), ("1.", 1.0), ("1e-3", 0.001),
    ("1E3", 1000.0), ("1_000.5", 1000.5), ("0x1p-2", 0.25), ("0X_1.8P1", 3.0),
    ("inf", math.inf), ("-Infinity", -math.inf), ("3.4028235e38", 3.4028235e38), ("1e-50", 1e-50),
])
def test_float_values(text, value):
    assert convert_parameter("temperature", text) == value


def test_float_nan():
    assert math.isnan(convert_parameter("top_p", "NaN"))


@pytest.mark.parametrize("text", [
    "hot", "1,5", "", " 1", "1e", ".", "0x1", "1__0", "_1", "1_", "+nan", "infin", "1e39",
    "-3.5e38", "0x1p200", "1e400",
])
def test_invalid_float_values(text):
    with pytest.raises(ModelfileError, match="float value"):
        convert_parameter("temperature", text)


@pytest.mark.parametrize("text", ["1", "t", "T", "TRUE", "true", "True"])
def test_bool_true_spellings(text):
    assert convert_parameter("use_mmap", text) is True


@pytest.mark.parametrize("text", ["0", "f", "F", "FALSE", "false", "False"])
def test_bool_false_spellings(text):
    assert convert_parameter("use_mmap", text) is False


@pytest.mark.parametrize("text", ["yes", "TrUe", "", "2", "on"])
def test_invalid_bool_values(text):
    with pytest.raises(ModelfileError, match="invalid bool value for parameter 'use_mmap'"):
        convert_parameter("use_mmap", text)


def test_parameter_types_cover_the_ollama_list():
    assert len(PARAMETER_TYPES) == 20
    assert {PARAMETER_TYPES[n] for n in ("num_ctx", "top_p", "use_mmap", "stop")} == \
        {int, float, bool, list}


@pytest.mark.parametrize("value, text", [
    (True, "true"), (False, "false"), (4096, "4096"), (-1, "-1"), (0.7, "0.7"), (1.0, "1.0"),
    (1e-05, "1e-05"), ("</s>", "</s>"),
])
def test_format_parameter_value(value, text):
    assert format_parameter_value(value) == text


@given(st.one_of(
    st.tuples(st.just("seed"), st.integers(-(2**63), 2**63 - 1)),
    st.tuples(st.just("temperature"), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just("use_mmap"), st.booleans()),
))
def test_typed_values_round_trip(pair):
    name, value = pair
    assert convert_parameter(name, format_parameter_value(value)) == value


# --- format ---------------------------------------------------------------------------------


def test_format_writes_plain_values_bare():
    m = parse("from base\nparameter stop </s>\nmessage user hi there\nlicense MIT")
    assert format(m) == "FROM base\nPARAMETER stop </s>\nMESSAGE user hi there\nLICENSE MIT\n"


@pytest.mark.parametrize("value, written", [
    ("", '""'),
    ("two\nlines", '"two\nlines"'),
    ("cr\rhere", '"cr\rhere"'),
    (" lead", '" lead"'),
    ("trail\t", '"trail\t"'),
    ('"quoted" start', '"""\"quoted" start"""'),
    ('say "hi"\nbye', '"""say "hi"\nbye"""'),
    ('inner "quotes" stay bare', 'inner "quotes" stay bare'),
    ('a"""b', 'a"""b'),
    ('"""', '"' * 9),
])
def test_format_quotes_only_when_needed(value, written):
    m = Modelfile((I("from", "x"), I("system", value)))
    assert format(m) == f"FROM x\nSYSTEM {written}\n"
    assert parse(format(m)) == m


def test_format_quotes_from_when_needed():
    m = Modelfile((I("from", "  spaced name"),))
    assert format(m) == 'FROM "  spaced name"\n'
    assert parse(format(m)).from_ == "  spaced name"


@pytest.mark.parametrize("value", ['a"""\nb', '"""\nx', 'x\nend"""  \ny', "bell\x07", "nbsp\u00a0"])
def test_format_refuses_unrepresentable_values(value):
    with pytest.raises(ModelfileError, match="cannot write SYSTEM"):
        format(Modelfile((I("from", "x"), I("system", value))))


@pytest.mark.parametrize("bad", [
    I("SYSTEM", "x"), I("foo", "x"), I("parameter", "1"), I("parameter", "1", "num-ctx"),
    I("parameter", "1", ""), I("message", "hi", "tool"), I("message", "hi"), I("system", "x", "n"),
])
def test_format_refuses_invalid_instructions(bad):
    with pytest.raises(ModelfileError):
        format(Modelfile((I("from", "x"), bad)))


def test_format_needs_a_from():
    with pytest.raises(ModelfileError, match="no FROM line"):
        format(Modelfile((I("system", "x"),)))


# --- properties -----------------------------------------------------------------------------

_VALUE_CHARS = st.one_of(
    st.sampled_from(list(' \t\n\r"\'#\\abcXYZ019_:<|>') + ['"""', "\r\n", "你", "👋"]),
    st.characters(codec="utf-8", exclude_categories=("C", "Z")),   # printable, as Ollama's IsPrint
)
values = st.lists(_VALUE_CHARS, max_size=12).map("".join)
any_values = st.lists(_VALUE_CHARS | st.sampled_from(["\x00", "\x07", "\u00a0", "\u2028"]),
                      max_size=12).map("".join)


def representable(value: str) -> bool:
    """Independent oracle: can a Modelfile hold this value exactly?"""
    if any(not (c.isprintable() or c in "\t\r\n") for c in value):
        return False
    bare = value and value.strip(" \t\r\n") == value and not value.startswith('"') \
        and "\n" not in value and "\r" not in value
    if bare or '"' not in value:
        return True
    # In """...""", every line before the last must not end (after blanks) with """,
    # except that the opening line needs six quotes in all to close.
    *before_last, _ = re.split(r"\r\n|\r|\n", '"""' + value)
    for number, line in enumerate(before_last):
        line = line.rstrip(" \t")
        if line.endswith('"""') and (number > 0 or len(line) >= 6):
            return False
    return True


def instructions(value_strategy):
    names = st.text("abcdefghijklmnopqrstuvwxyzABCZ0189_", min_size=1, max_size=8)
    plain = st.sampled_from([k for k in KEYWORDS if k not in ("parameter", "message")])
    return st.one_of(
        st.builds(Instruction, plain, value_strategy),
        st.builds(Instruction, st.just("parameter"), value_strategy, names),
        st.builds(Instruction, st.just("message"), value_strategy, st.sampled_from(ROLES)),
    )


REPRESENTABLE = values.filter(representable)


@st.composite
def modelfiles(draw, value_strategy=None):
    value_strategy = value_strategy or REPRESENTABLE
    body = draw(st.lists(instructions(value_strategy), max_size=6))
    where = draw(st.integers(0, len(body)))
    base = Instruction("from", draw(value_strategy))
    return Modelfile(tuple(body[:where]) + (base,) + tuple(body[where:]))


@settings(max_examples=3000, deadline=None)
@given(modelfiles())
def test_format_then_parse_round_trips(m):
    assert parse(format(m)) == m


@settings(max_examples=2000, deadline=None)
@given(any_values)
def test_format_refuses_exactly_the_unrepresentable(value):
    m = Modelfile((I("from", "x"), I("system", value)))
    if representable(value):
        assert parse(format(m)) == m
    else:
        with pytest.raises(ModelfileError):
            format(m)


_FUZZ_PIECES = st.one_of(
    st.sampled_from([
        "FROM", "from ", "PARAMETER ", "MESSAGE ", "SYSTEM ", "TEMPLATE", "user ", "stop ",
        "num_ctx ", "temperature ", " ", "\t", "\n", "\r", "\r\n", '"', '"""', "#", "x", "4k",
        "0.5", "true", "\ufeff", "\x00", "\x07", "é", "\u00a0",
    ]),
    st.text(max_size=3),
)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_FUZZ_PIECES, max_size=30).map("".join))
def test_parse_only_raises_modelfile_error(text):
    try:
        m = parse(text)
        m.parameters()
        m.warnings()
        format(m)
    except ModelfileError:
        pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_parse_bytes_only_raises_modelfile_error(data):
    try:
        parse(data)
    except ModelfileError:
        pass


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(sorted(PARAMETER_TYPES) + ["mirostat", "nope"]), st.text(max_size=12))
def test_convert_parameter_only_raises_modelfile_error(name, value):
    try:
        convert_parameter(name, value)
    except ModelfileError:
        pass
