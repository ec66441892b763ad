"""modelpkg.ops.chat: parameters from the command line and batch lines, conversations, the three prompt paths,
truncation, and the weights check before loading.

The pure parts run without a model. The prompt paths run against the real Gemma 3 270M in llama.cpp: the
Go TEMPLATE path (what is sent is exactly what ``prompt.render`` gives, special tokens parsed), the
GGUF's own Jinja template (a copy of Gemma with ``tokenizer.chat_template`` added to its header), and
plain completion for the base model.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelpkg.core import prompt
from modelpkg.core.errors import IntegrityError, InvalidInputError, NotFoundError, UsageError
from modelpkg.ops import chat
from modelpkg.ops.models import describe
from modelpkg.store import Store

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "Modelfile.examples"
GEMMA_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% else %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n'"
    " + message['content'] | trim + '<end_of_turn>\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------------------------
# parameters


def test_assignments_are_typed_and_stop_accumulates():
    assert chat.parse_assignments(["temperature=0", "num_ctx=128", "stop=a", "stop=b=c", "use_mmap=false"]) == {
        "temperature": 0.0, "num_ctx": 128, "stop": ["a", "b=c"], "use_mmap": False}


@pytest.mark.parametrize("pair, words", [
    ("temperature", "NAME=VALUE"),
    ("=1", "NAME=VALUE"),
    ("temprature=1", "temperature"),        # the hint suggests the right name
    ("num_ctx=4k", "invalid int"),
    ("top_p=hot", "invalid float"),
])
def test_bad_assignments_are_usage_errors(pair, words):
    with pytest.raises(UsageError) as e:
        chat.parse_assignments([pair])
    assert words in f"{e.value.message} {e.value.hint}"


def test_batch_options_take_json_types_or_strings():
    assert chat.typed_options({"temperature": 0, "num_predict": 8.0, "stop": "x", "seed": "7", "use_mmap": True}) == {
        "temperature": 0.0, "num_predict": 8, "stop": ["x"], "seed": 7, "use_mmap": True}
    assert chat.typed_options(None) == {}


@pytest.mark.parametrize("options", [[1], {"num_predict": 1.5}, {"stop": [1]}, {"temperature": True},
                                     {"use_mmap": 1}, {"nope": 1}])
def test_bad_batch_options(options):
    with pytest.raises(InvalidInputError):
        chat.typed_options(options)


# ------------------------------------------------------------------------------------------------------
# conversations


def test_conversation_puts_system_first_then_model_history_then_turns():
    model = [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]
    turns = [{"role": "user", "content": "q2"}]
    assert chat.conversation(model, turns, "be brief") == [
        {"role": "system", "content": "be brief"}, *model, *turns]
    assert chat.conversation(model, turns, None) == [*model, *turns]


def test_a_conversation_that_brings_its_own_system_message_keeps_it_alone():
    turns = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    assert chat.conversation([], turns, "the model's") == turns


@pytest.mark.parametrize("messages", [[], "hi", [{"role": "robot", "content": "x"}], [{"role": "user"}],
                                      [{"role": "user", "content": 3}]])
def test_bad_messages(messages):
    with pytest.raises(InvalidInputError):
        chat.check_messages(messages)


def test_prompt_path_choice():
    assert chat.prompt_kind("{{ .Prompt }}", "{{ messages }}") == chat.GO_TEMPLATE  # a TEMPLATE wins
    assert chat.prompt_kind(None, "{{ messages }}") == chat.GGUF_TEMPLATE
    assert chat.prompt_kind(None, None) == chat.COMPLETION


# ------------------------------------------------------------------------------------------------------
# finding and checking the model (a tiny GGUF is enough: nothing is loaded)


def test_missing_model_is_not_found_without_pulling(home, tiny_model):
    from modelpkg.base import config

    with pytest.raises(NotFoundError):
        chat.open_model(Store(config.home()), config.reference("nothere"), pull=False)


def test_weights_are_hashed_once_then_trusted_until_the_file_changes(home, tiny_model):
    from modelpkg.base import config

    store = Store(config.home())
    ref = tiny_model("tiny")
    details = chat.open_model(store, ref, pull=False)
    blob = details.model_path
    markers = list((store.ingest_dir / "verified").iterdir())
    assert [m.name for m in markers] == [blob.name]

    # Same size, same mtime, same inode: trusted without hashing (the point of the marker) ...
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    with open(blob, "r+b") as f:
        f.write(data)
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    chat.open_model(store, ref, pull=False)

    # ... but any change to the file's stamp makes it hash again, and the corruption is found.
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    with pytest.raises(IntegrityError) as e:
        chat.open_model(store, ref, pull=False)
    assert "corrupted" in e.value.message and details.name in e.value.message


# ------------------------------------------------------------------------------------------------------
# the prompt paths, with the real model


def _create(store: Store, name: str, example: str, gguf: Path, folder: Path):
    from modelpkg.base import config
    from modelpkg.ops.create import create

    folder.mkdir(exist_ok=True)
    target = folder / "gemma3-270m-q4_k_m.gguf"
    if not target.exists():
        os.symlink(gguf, target)
    ref = config.reference(name)
    create(store, ref, (EXAMPLES / example).read_text(), folder, resolve_name=config.reference)
    return describe(store, ref)


@pytest.fixture(scope="module")
def gemma_store(tmp_path_factory, gemma_gguf):
    store = Store(tmp_path_factory.mktemp("chat-home"))
    folder = tmp_path_factory.mktemp("chat-examples")
    details = {name: _create(store, name, f"gemma3-{name}.Modelfile", gemma_gguf, folder)
               for name in ("base", "chat", "history")}
    return store, details


@pytest.fixture(scope="module")
def runners():
    """Load each set of load options once for the module (a Session would load its own)."""
    from modelpkg.runtime.runner import Runner

    loaded: dict = {}

    def load(options):
        if options not in loaded:
            loaded[options] = Runner.load(options)
        return loaded[options]

    yield load
    for runner in loaded.values():
        runner.close()



@pytest.mark.model
def test_go_template_prompt_is_what_template_render_gives(gemma_store, runners):
    _, details = gemma_store
    session = chat.Session(details["chat"], {"num_predict": 4}, load=runners)
    answer = session.send("What is the capital of France?").text()
    expected = prompt.render(details["chat"].template, [
        {"role": "system", "content": details["chat"].system},
        {"role": "user", "content": "What is the capital of France?"}])
    assert session.last_prompt.kind == chat.GO_TEMPLATE
    assert session.last_prompt.text == expected
    runner = session.runner()
    assert runner.last_prompt == expected
    # special tokens parsed: <start_of_turn> and <end_of_turn> are single tokens, after one BOS
    start, end = runner.tokenize("<start_of_turn>", False), runner.tokenize("<end_of_turn>", False)
    assert len(start) == len(end) == 1
    tokens = runner.last_prompt_tokens
    assert tokens[0] == runner._llm.token_bos() and tokens[1] != tokens[0]
    assert tokens.count(start[0]) == 2 and tokens.count(end[0]) == 1
    # the turn is remembered, and the next prompt holds it
    assert session.turns == [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": answer}]
    session.send("And of Italy?").text()
    assert f"{answer}<end_of_turn>\n<start_of_turn>user\nAnd of Italy?<end_of_turn>" in runner.last_prompt


@pytest.mark.model
def test_model_history_and_system_are_in_the_prompt(gemma_store, runners):
    _, details = gemma_store
    session = chat.Session(details["history"], {"num_predict": 2}, load=runners)
    session.send("And of Italy?").text()
    text = session.last_prompt.text
    assert text.startswith("<start_of_turn>user\nYou answer geography questions with the city name only.\n"
                           "What is the capital of France?<end_of_turn>\n<start_of_turn>model\nParis.<end_of_turn>")
    assert text.endswith("<start_of_turn>user\nAnd of Italy?<end_of_turn>\n<start_of_turn>model\n")
    # /set system replaces the model's; /clear forgets the session's turns, not the model's MESSAGEs
    session.set_system("Reply in French.")
    session.clear()
    session.send("And of Peru?").text()
    assert "Reply in French." in session.last_prompt.text and "geography" not in session.last_prompt.text
    assert "Paris." in session.last_prompt.text and "Italy" not in session.last_prompt.text


@pytest.mark.model
def test_base_model_gets_the_prompt_as_it_is(gemma_store, runners):
    _, details = gemma_store
    session = chat.Session(details["base"], {"num_predict": 3}, system="ignored, as Ollama's {{ .Prompt }} does",
                           load=runners)
    first = session.send("The sky is").text()
    assert session.last_prompt.kind == chat.COMPLETION
    assert session.last_prompt.text == "The sky is"
    session.send(" And the sea is").text()
    assert session.last_prompt.text == "The sky is" + first + " And the sea is"


@pytest.mark.model
def test_oldest_turns_are_dropped_when_the_context_is_full(gemma_store, runners):
    _, details = gemma_store
    session = chat.Session(details["chat"], {"num_ctx": 160, "num_predict": 16}, load=runners)
    session.turns = [m for i in range(12) for m in (
        {"role": "user", "content": f"question number {i} about the weather"},
        {"role": "assistant", "content": f"answer number {i}: sunny"})]
    session.send("last question").text()
    text = session.last_prompt.text
    assert details["chat"].system in text and "last question" in text
    assert "question number 0 " not in text and "answer number 11" in text
    assert len(session.runner().last_prompt_tokens) + 16 <= 160


def _with_chat_template(src: Path, dst: Path, template: str) -> Path:
    """Copy a GGUF (v2/v3) adding ``tokenizer.chat_template`` to its metadata; tensors are copied as they are.

    gguf's own gguf_new_metadata.py does this in ~12 s for Gemma (its reader decodes the 262k-token vocabulary
    in Python); skipping over the arrays takes well under a second."""
    with open(src, "rb") as f:
        head = f.read(64 << 20)
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", head, 0)
    assert magic == b"GGUF" and version >= 2
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    pos = 24
    alignment = 32

    def string(p):
        (n,) = struct.unpack_from("<Q", head, p)
        return head[p + 8:p + 8 + n], p + 8 + n

    def value(p, kind):
        if kind in sizes:
            return p + sizes[kind]
        if kind == 8:
            return string(p)[1]
        item, count = struct.unpack_from("<IQ", head, p)
        p += 12
        if item in sizes:
            return p + sizes[item] * count
        for _ in range(count):
            p = value(p, item)
        return p

    for _ in range(n_kv):
        key, pos = string(pos)
        (kind,) = struct.unpack_from("<I", head, pos)
        if key == b"general.alignment":
            (alignment,) = struct.unpack_from("<I", head, pos + 4)
        pos = value(pos + 4, kind)
    kv_end = pos
    for _ in range(n_tensors):
        _, pos = string(pos)
        (dims,) = struct.unpack_from("<I", head, pos)
        pos += 4 + 8 * dims + 4 + 8
    data_start = -(-pos // alignment) * alignment
    key, text = b"tokenizer.chat_template", template.encode()
    extra = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(text)) + text
    header = struct.pack("<4sIQQ", magic, version, n_tensors, n_kv + 1) + head[24:kv_end] + extra + head[kv_end:pos]
    header += b"\0" * (-len(header) % alignment)
    with open(src, "rb") as f, open(dst, "wb") as out:
        out.write(header)
        f.seek(data_start)
        shutil.copyfileobj(f, out, 16 << 20)
    return dst


@pytest.mark.model
def test_gguf_jinja_template_is_used_when_there_is_no_template(tmp_path, gemma_gguf):
    from modelpkg.base import config
    from modelpkg.ops.create import create

    _with_chat_template(gemma_gguf, tmp_path / "gemma-jinja.gguf", GEMMA_JINJA)
    store = Store(tmp_path / "home")
    ref = config.reference("jinja")
    create(store, ref, "FROM ./gemma-jinja.gguf\nSYSTEM Be brief.\nPARAMETER num_predict 4\nPARAMETER temperature 0\n",
           tmp_path, resolve_name=config.reference)
    session = chat.Session(describe(store, ref))
    try:
        session.send("Hello").text()
        runner = session.runner()
        assert runner.chat_template == GEMMA_JINJA
        assert session.last_prompt.kind == chat.GGUF_TEMPLATE and not session.last_prompt.add_bos
        assert session.last_prompt.text == \
            "<bos>Be brief.\n\n<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n"
        assert runner.last_prompt_tokens[0] == runner._llm.token_bos()
        assert runner.last_prompt_tokens.count(runner._llm.token_bos()) == 1
        assert session.template_text() == GEMMA_JINJA
    finally:
        session.close()


_MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "tool"]),
                                            "content": st.text("ab \n", max_size=4)}), max_size=8)


@given(_MESSAGES)
def test_plain_completion_prompt_is_ollamas_default_template(messages):
    """A base model's prompt is what Ollama's default template {{ .Prompt }} renders, turn by turn."""
    assert chat.completion_prompt(messages) == prompt.render(chat.DEFAULT_TEMPLATE, messages)


def test_plain_completion_prompt_examples():
    assert chat.completion_prompt([{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]) == "Hi"
    assert chat.completion_prompt([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                   {"role": "user", "content": "c"}]) == "abc"
    assert chat.completion_prompt([{"role": "user", "content": "a"}, {"role": "user", "content": "c"}]) == "a\n\nc"
