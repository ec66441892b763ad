"""modelpkg.core.gotemplate: Go text/template semantics (variables, control structures, printing, printf,
the functions), parse and execution errors with their positions, the limits, structs, and fuzz properties
of printing (only TemplateError ever escapes, nothing hangs).
"""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelpkg.core.errors import TemplateError
from modelpkg.core.gotemplate import MAX_OUTPUT, Template, parse
from modelpkg.core.gotemplate.values import Struct, StructType

# The language, with Go's semantics

DATA = {"Name": "Ada", "L": [1, 2, 3], "S": ["a", "b"], "M": {"z": 1, "a": 2}, "Empty": [], "Zero": 0,
        "F": 2.5, "T": True, "Nested": {"Inner": {"Value": "deep"}}}


@pytest.mark.parametrize("source, expected", [
    # variables: declare, assign in an inner scope, scope ends at {{end}}
    ('{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ $y := 3 }}{{ $y }}{{ end }}{{ $x }}', "32"),
    ("{{ $n := .Name }}{{ with .Nested }}{{ $n }} {{ $.Name }} {{ .Inner.Value }}{{ end }}", "Ada Ada deep"),
    # range with index and element, else, over a map in key order, over an integer
    ("{{ range $i, $m := .S }}{{ $i }}={{ $m }} {{ end }}", "0=a 1=b "),
    ("{{ range $m := .S }}{{ $m }}{{ end }}", "ab"),
    ("{{ range .Empty }}x{{ else }}empty{{ end }}", "empty"),
    ("{{ range $k, $v := .M }}{{ $k }}:{{ $v }} {{ end }}", "a:2 z:1 "),
    ("{{ range 3 }}{{ . }}{{ end }}", "012"),
    ("{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ if eq . 3 }}{{ break }}{{ end }}{{ . }}{{ end }}", "1"),
    # nested ifs, else if chains, with / else with
    ('{{ if .T }}{{ if .Zero }}a{{ else if eq .Name "Ada" }}{{ if .L }}b{{ end }}{{ else }}c{{ end }}{{ end }}', "b"),
    ("{{ if .Zero }}a{{ else if .Empty }}b{{ else if .F }}c{{ else }}d{{ end }}", "c"),
    ("{{ with .Missing }}a{{ else with .Name }}{{ . }}{{ else }}c{{ end }}", "Ada"),
    # trim markers remove all adjacent whitespace, comments vanish
    ("a \n\t {{- .Name -}} \n\n b", "aAdab"),
    ("a  {{- /* a comment */ -}}  b{{/* another */}}", "ab"),
    ("{{- 3 }} {{ -3 }} {{-3}} {{ 3 -}}\n x", "3 -3 -3 3x"),  # a trim marker needs the space
    # how Go prints values
    ("{{ .L }} {{ .M }} {{ .T }} {{ .F }} {{ 1e6 }} {{ 1.0 }} {{ 'a' }}", "[1 2 3] map[a:2 z:1] true 2.5 1e+06 1 97"),
    ("{{ .Missing }}|{{ .Missing.Deeper }}|{{ .Nested.Nope }}", "||"),
    # printf verbs as Go formats them
    ('{{ printf "%s|%d|%v|%q|%x|%X|%o|%b|%c|%t|%%" "s" 42 .L "q\\"" 255 "hi" 8 5 65 true }}',
     's|42|[1 2 3]|"q\\""|ff|6869|10|101|A|true|%'),
    ('{{ printf "%f|%.2f|%8.3f|%-8.2f|%e|%g|%G" 3.14159 2.675 3.14159 2.5 123456.789 0.0001 1e-7 }}',
     "3.141590|2.67|   3.142|2.50    |1.234568e+05|0.0001|1E-07"),
    ('{{ printf "%5d|%-5d|%05d|%+d|%x|%#x|%T|%T" 42 42 -42 5 -255 255 .L .F }}',
     "   42|42   |-0042|+5|-ff|0xff|[]interface {}|float64"),
    ('{{ printf "%d %s" "x" 1 }}|{{ printf "%d" }}|{{ printf "%d" 1 2 }}|{{ printf "%[2]s %[1]s" "a" "b" }}',
     "%!d(string=x) %!s(int=1)|%!d(MISSING)|1%!(EXTRA int=2)|b a"),
    ('{{ printf "%.3s|%5.1q|%v" "abcdef" "abc" .Missing }}', 'abc|  "a"|<nil>'),
    ('{{ print 1 2 "a" "b" 3 }}|{{ println "x" 1 }}', "1 2ab3|x 1\n"),
    # index, slice, len (strings are bytes)
    ('{{ index .L 1 }} {{ index .M "z" }} {{ index .Nested "Inner" "Value" }} {{ index "abc" 0 }}', "2 1 deep 97"),
    ('{{ slice .L 1 }} {{ slice .L 0 2 }} {{ slice "hello" 1 3 }} {{ len .L }} {{ len "héllo" }} {{ len .M }}',
     "[2 3] [1 2] el 3 6 2"),
    ('{{ index .M "nope" }}|{{ index .L }}', "|[1 2 3]"),
    # comparisons
    ('{{ eq 1 1 }} {{ eq .Name "Bob" "Ada" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt "b" "a" }} '
     '{{ ge 1.5 2.5 }}',
     "true true true true true true false"),
    ('{{ eq .Missing "x" }} {{ eq .Missing .AlsoMissing }}', "false true"),
    # and / or return an operand and stop early; not is truthiness
    ('{{ and 1 0 "x" }}|{{ and 1 "x" }}|{{ or 0 "" "y" }}|{{ or 0 "" }}|{{ not .Empty }}', "0|x|y||true"),
    ('{{ and false (index .L 99) }}|{{ or true (index .L 99) }}|{{ if and .L (gt (len .L) 2) }}ok{{ end }}',
     "false|true|ok"),
    # pipelines pass the value as the last argument; parentheses and chains
    ('{{ .Name | printf "%s-%s" "x" }}|{{ (index .Nested "Inner").Value }}|{{ .L | len }}', "x-Ada|deep|3"),
    # escapers and Ollama's json
    ("{{ html \"<a href='x'>&</a>\" }}", "&lt;a href=&#39;x&#39;&gt;&amp;&lt;/a&gt;"),
    ('{{ js "it\'s <b>" }}|{{ urlquery "a b&c/d~" }}', "it\\'s \\u003Cb\\u003E|a+b%26c%2Fd~"),
    ('{{ json .M }} {{ json .L }} {{ json "<&>" }} {{ json .F }} {{ json 1e21 }} {{ json .Missing }}',
     '{"a":2,"z":1} [1,2,3] "\\u003c\\u0026\\u003e" 2.5 1e+21 null'),
    # string and number literals
    ('{{ "a\\tb\\u00e9\\x41" }}|{{ `raw\\n` }}|{{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 1_000 }} {{ 1e3 }}',
     "a\tbéA|raw\\n|31 15 15 1000 1000"),
])
def test_language(source, expected):
    assert parse(source).execute(DATA) == expected


@pytest.mark.parametrize("call, expected", [
    ("and 1 2", "2"), ("or 0 3", "3"), ("not 1", "false"), ("eq 1 1", "true"), ("ne 1 1", "false"),
    ("lt 1 2", "true"), ("le 2 1", "false"), ("gt 2 1", "true"), ("ge 1 2", "false"), ("len .S", "2"),
    ("index .S 1", "b"), ("slice .S 1", "[b]"), ("print .S", "[a b]"), ('printf "%03d" 7', "007"),
    ("println 1", "1\n"), ('html "<"', "&lt;"), ('js "<"', "\\u003C"), ('urlquery "a b"', "a+b"),
    ("json .S", '["a","b"]'), ("toTypeScriptType .S", "any"),
])
def test_every_function(call, expected):
    assert parse("{{ " + call + " }}").execute({"S": ["a", "b"]}) == expected


def test_current_date_reads_the_clock_when_called():
    before = datetime.date.today()
    got = parse("{{ currentDate }}|{{ yesterdayDate }}").execute({})
    after = datetime.date.today()
    assert got in {f"{d.isoformat()}|{(d - datetime.timedelta(days=1)).isoformat()}" for d in (before, after)}


def test_parse_is_cached_and_keeps_its_source():
    source = "{{ .Prompt }} cached"
    template = parse(source)
    assert isinstance(template, Template)
    assert parse(source) is template
    assert str(template) == source
    assert "prompt" in template.identifiers


@pytest.mark.parametrize("source, message", [
    ("{{ .Prompt ", "template line 1, column 1: unclosed action"),
    ("a\nb {{ end }}", "template line 2, column 3: unexpected {{end}}"),
    ("{{ if .X }}\n{{ else }}a{{ else }}b{{ end }}", "template line 2, column 12: expected end; found {{else}}"),
    ("x\n\n  {{ if .X }}y", "template line 3, column 15: unexpected EOF: {{if}} at line 3, column 3 has no {{end}}"),
    ("{{ .A }}\n{{ upper .A }}", 'template line 2, column 4: function "upper" not defined'),
    ("{{ $x }}", 'template line 1, column 4: undefined variable "$x"'),
    ("{{ .A (.B ( }}", "template line 1, column 11: unclosed left paren"),
    ('{{ "abc }}', "template line 1, column 4: unterminated quoted string"),
    ("{{ 3x }}", 'template line 1, column 4: bad number syntax: "3x"'),
    ("{{ .A | 1 }}", "template line 1, column 9: non executable command in pipeline stage 2"),
    ("{{ if }}{{ end }}", "template line 1, column 7: missing value for if"),
    ("{{ break }}", "template line 1, column 1: {{break}} outside {{range}}"),
    ("{{/* open", "template line 1, column 1: unclosed comment"),
    ('{{ template "x" }}', "template line 1, column 4: {{template}} is not supported"),
    ('{{ define "x" }}y{{ end }}', "template line 1, column 4: {{define}} is not supported"),
    ("{{ call .F }}", 'template line 1, column 4: function "call" is not supported'),
    ("{{ 1+2i }}", "template line 1, column 4: complex number 1+2i is not supported"),
    ('{{ "\\q" }}', 'template line 1, column 4: invalid syntax: "\\"\\\\q\\""'),
    ("{{ 99999999999999999999 }}", 'template line 1, column 4: integer overflow: "99999999999999999999"'),
    ("{{ 1e400 }}", 'template line 1, column 4: illegal number syntax: "1e400"'),
    ("{{ range $i, $e, $f := .L }}{{ end }}", "template line 1, column 16: too many declarations in range"),
    ("{{ range .L }}{{ else if .A }}{{ end }}", "template line 1, column 23: unexpected <if> in input"),
    ("x {{-  /* two spaces */ -}}", 'template line 1, column 8: unexpected "/" in command'),
])
def test_parse_errors_name_the_position(source, message):
    with pytest.raises(TemplateError) as info:
        parse(source)
    assert str(info.value) == message


@pytest.mark.parametrize("source, message", [
    ("{{ index .L 5 }}", "template line 1, column 4: error calling index: index out of range: 5"),
    ("{{ eq 1 1.5 }}", "template line 1, column 4: error calling eq: incompatible types for comparison"),
    ("{{ lt true false }}", "template line 1, column 4: error calling lt: invalid type for comparison"),
    ("{{ len 3 }}", "template line 1, column 4: error calling len: len of type int"),
    ("{{ .Name.Field }}", "template line 1, column 4: can't evaluate field Field in type string"),
    ("{{ .Name 1 }}", "template line 1, column 4: Name is not a method but has arguments"),
    ("{{ range .Name }}{{ end }}", "template line 1, column 1: range can't iterate over Ada"),
    ("{{ not }}", "template line 1, column 4: wrong number of args for not: want 1 got 0"),
    ("{{ nil }}", "template line 1, column 4: nil is not a command"),
])
def test_execution_errors_name_the_position(source, message):
    with pytest.raises(TemplateError) as info:
        parse(source).execute({"Name": "Ada", "L": [1]})
    assert str(info.value) == message


def test_structs_print_and_marshal_by_their_type():
    """A caller's Go structs (modelpkg.core.prompt declares Ollama's) print as Go prints them, and json uses
    their json keys and omitempty."""
    point = StructType("main.Point", (("X", "x", False), ("Y", "y", True)))
    source = '{{ . }}|{{ .X }}|{{ .Nope }}|{{ json . }}|{{ printf "%T %+v %#v" . . . }}'
    assert parse(source).execute(Struct(point, {"X": 1, "Y": 0})) == \
        '{1 0}|1||{"x":1}|main.Point {X:1 Y:0} main.Point{X:1, Y:0}'
    pointer = StructType("*main.Point", point.json_fields, pointer=True)
    assert parse("{{ . }}").execute(Struct(pointer, {"X": 1, "Y": 2})) == "&{1 2}"
    stringer = StructType("main.Named", point.json_fields, stringer=True)  # its String method gives its JSON
    assert parse("{{ . }}").execute(Struct(stringer, {"X": 1, "Y": 2})) == '{"x":1,"y":2}'


# ------------------------------------------------------------------------------------------------------
# Limits: a hostile template is refused, not run to exhaustion


@pytest.mark.parametrize("source, data", [
    ("{{ range .L }}{{ range $.L }}x{{ end }}{{ end }}", {"L": list(range(1000))}),  # 10^6 iterations
    ("{{ range 100000000 }}x{{ end }}", {}),
    ("{{ range .L }}{{ $.Big }}{{ end }}", {"L": list(range(100)), "Big": "x" * 100_000}),  # 10 MB of output
    ('{{ $s := "xxxxxxxx" }}{{ range .L }}{{ $s = printf "%s%s" $s $s }}{{ end }}', {"L": list(range(64))}),
    ('{{ printf "%0999999d" 1 }}' * 2, {}),
])
def test_limits_refuse_runaway_templates(source, data):
    with pytest.raises(TemplateError):
        parse(source).execute(data)


def test_output_limit_is_one_mebibyte():
    assert len(parse("{{ .S }}").execute({"S": "x" * MAX_OUTPUT})) == MAX_OUTPUT
    with pytest.raises(TemplateError, match="output is larger than 1 MiB"):
        parse("{{ .S }}!").execute({"S": "x" * MAX_OUTPUT})


def test_nesting_is_capped():
    with pytest.raises(TemplateError, match="nesting"):
        parse("{{ if 1 }}" * 60 + "{{ end }}" * 60)
    with pytest.raises(TemplateError, match="nesting"):
        parse("{{ " + "(" * 60 + "1" + ")" * 60 + " }}")
    assert parse("{{ if 1 }}" * 30 + "x" + "{{ end }}" * 30).execute({}) == "x"


def test_self_referencing_data_is_refused():
    loop: list = []
    loop.append(loop)
    with pytest.raises(TemplateError, match="nested too deeply"):
        parse("{{ . }}").execute(loop)


# ------------------------------------------------------------------------------------------------------
# Fuzzing: printing and printf of any value

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), st.binary(max_size=4))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=4)),
                      max_leaves=12)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=40), st.lists(VALUES, max_size=4))
def test_fuzz_printf_formats_and_values(fmt, args):
    source = "{{ printf .F " + " ".join(f"(index .A {i})" for i in range(len(args))) + " }}"
    try:
        assert isinstance(parse(source).execute({"F": fmt, "A": args}), str)
    except TemplateError:
        pass


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_fuzz_printing_any_value(value):
    source = ("{{ . }}|{{ json . }}|{{ print . . }}|{{ html . }}|{{ js . }}|{{ urlquery . }}"
              '|{{ printf "%v %+v %#v %q %x %d" . . . . . . }}|{{ if . }}t{{ end }}{{ with . }}w{{ end }}'
              "|{{ range $k, $v := . }}{{ $k }}{{ $v }}{{ end }}|{{ len . }}")
    try:
        assert isinstance(parse(source).execute(value), str)
    except TemplateError:
        pass
