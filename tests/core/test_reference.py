"""Model references: defaults merged into one canonical form, bad names refused with a clear message."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelpkg.core.digest import Digest
from modelpkg.core.errors import InvalidReferenceError, ModelpkgError
from modelpkg.core.reference import parse_reference

HEX = "a" * 64


@pytest.mark.parametrize("text, canonical", [
    ("gemma3", "registry.ollama.ai/library/gemma3:latest"),
    ("gemma3:1b", "registry.ollama.ai/library/gemma3:1b"),
    ("acme/tiny:q4", "registry.ollama.ai/acme/tiny:q4"),
    ("localhost:5000/acme/tiny:q4", "localhost:5000/acme/tiny:q4"),
    ("localhost/tiny", "localhost/tiny:latest"),
    ("127.0.0.1:5000/tiny", "127.0.0.1:5000/tiny:latest"),
    ("ghcr.io/org/team/model:v1", "ghcr.io/org/team/model:v1"),
    (f"ghcr.io/org/model@sha256:{HEX}", f"ghcr.io/org/model@sha256:{HEX}"),
    (f"ghcr.io/org/model:v1@sha256:{HEX}", f"ghcr.io/org/model:v1@sha256:{HEX}"),
    ("[::1]:5000/tiny:x", "[::1]:5000/tiny:x"),
    ("ab-c__d/e.f", "registry.ollama.ai/ab-c__d/e.f:latest"),
    ("a.b/e", "a.b/e:latest"),  # a dot in the first component makes it a host, as in Docker
])
def test_canonical_forms(text, canonical):
    assert str(parse_reference(text)) == canonical


def test_default_registry_is_configurable():
    ref = parse_reference("tiny", default_registry="localhost:5000")
    assert str(ref) == "localhost:5000/library/tiny:latest"
    assert ref.short("localhost:5000") == "tiny:latest"


@pytest.mark.parametrize("text, short", [
    ("gemma3", "gemma3:latest"),
    ("acme/tiny:q4", "acme/tiny:q4"),
    ("localhost:5000/acme/tiny:q4", "localhost:5000/acme/tiny:q4"),
])
def test_short_form_parses_back(text, short):
    ref = parse_reference(text)
    assert ref.short() == short
    assert parse_reference(ref.short()) == ref


def test_digest_reference_has_no_default_tag():
    ref = parse_reference(f"tiny@sha256:{HEX}")
    assert ref.tag is None and ref.digest == Digest(HEX)
    assert ref.reference == f"sha256:{HEX}"


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("Gemma3", "lowercase"),
    ("acme/../x", "'..'"),
    ("acme//x", "empty path component"),
    ("tiny:", "tag after ':' is empty"),
    ("tiny:-bad", "invalid tag"),
    ("tiny@sha256:abc", "sha256"),
    ("tiny@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("https://host/x", "scheme"),
    ("bad_host:99999999/x", "invalid registry host"),
    ("a" * 300, "longer than"),
    ("a--b_/c", "bad component"),
])
def test_bad_names_are_refused_clearly(text, fragment):
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    assert fragment in info.value.message
    assert "\n" not in info.value.message


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_only_modelpkg_errors(text):
    try:
        ref = parse_reference(text)
    except ModelpkgError:
        return
    assert parse_reference(str(ref)) == ref


@settings(max_examples=500, deadline=None)
@given(st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,10})?", fullmatch=True))
def test_valid_names_round_trip(text):
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.short()) == ref
