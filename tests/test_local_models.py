"""Embedded models: assembling and verifying GGUF parts, the machine key, and the litellm provider `llamacpp`
run on the real SmolLM2-135M (integration tests; skipped when llama-cpp-python or the model is missing)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instruct_lf_dagster.core import local_models
from instruct_lf_dagster.core.local_models import EmbeddedModel, ModelError

ROOT = Path(__file__).resolve().parents[1]
SMALL = "smollm2-135m"


def write_parts(folder: Path, chunks: list[bytes]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, chunk in enumerate(chunks):
        part = folder / f"part{index:02d}.bin"
        part.write_bytes(chunk)
        parts.append(part)
    return parts


def test_assemble_concatenates_parts_in_order(tmp_path):
    chunks = [b"GGUF", os.urandom(1000), b"", b"tail"]
    parts = write_parts(tmp_path / "parts", chunks)
    whole = b"".join(chunks)
    target = tmp_path / "models" / "tiny.gguf"
    path = local_models.assemble(parts, target, size=len(whole), sha256=hashlib.sha256(whole).hexdigest())
    assert path == target
    assert target.read_bytes() == whole
    assert os.listdir(target.parent) == ["tiny.gguf"]  # no temporary file left behind


def test_assemble_with_wrong_checksum_fails_and_leaves_nothing(tmp_path):
    chunks = [b"GGUF", b"x" * 100]
    parts = write_parts(tmp_path / "parts", chunks)
    target = tmp_path / "models" / "tiny.gguf"
    with pytest.raises(ModelError, match="sha256"):
        local_models.assemble(parts, target, size=104, sha256="0" * 64)
    assert not target.exists()
    assert os.listdir(target.parent) == []
    # A wrong size is caught too (here: the parts are in the wrong order, same size, different hash).
    whole = b"".join(chunks)
    with pytest.raises(ModelError, match="expected 104 bytes"):
        local_models.assemble(parts[::-1], target, size=104, sha256=hashlib.sha256(whole).hexdigest())
    assert os.listdir(target.parent) == []


def test_resolve_assembles_a_split_model_once(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCT_LF_HOME", str(tmp_path / "home"))  # not the shared models folder
    chunks = [b"GG", b"UF", b"!"]
    parts = write_parts(tmp_path / "parts", chunks)
    whole = b"".join(chunks)
    fake = EmbeddedModel(
        name="fake-split",
        summary="test",
        packages=("fake-part1", "fake-part2", "fake-part3"),
        files=lambda: parts,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(local_models.MODELS, fake.name, fake)
    path = local_models.resolve(fake.name)
    assert path == local_models.data_dir() / "models" / "fake-split.gguf"
    assert path.read_bytes() == whole
    for part in parts:
        part.unlink()
    assert local_models.resolve(fake.name) == path  # ready: the parts are not needed again
    assert "fake-split" in local_models.describe()


def test_resolve_names_the_fix_when_a_model_is_not_installed(monkeypatch):
    fake = EmbeddedModel("fake-missing", "test", ("fake-pkg",), files=lambda: None, size=1, sha256="0" * 64)
    monkeypatch.setitem(local_models.MODELS, fake.name, fake)
    with pytest.raises(ModelError, match="instruct-lf model fetch fake-missing"):
        local_models.resolve(fake.name)
    assert "missing" in local_models.describe()


def test_resolve_rejects_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        local_models.resolve("no-such-model")
    with pytest.raises(ModelError, match="model file not found"):
        local_models.resolve(str(tmp_path / "absent.gguf"))
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    assert local_models.resolve(str(local)) == local.resolve()


def test_machine_key_is_stable_and_matches_the_install_script():
    key = local_models.machine_key()
    assert key == local_models.machine_key()
    assert len(key) == 16 and int(key, 16) >= 0
    script = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install_llama.sh"), "--print-key"],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=True,
    )
    assert script.stdout.strip() == key


def test_openai_response_formats_become_llama_grammars():
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    openai = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert local_models._llama_response_format(openai) == {"type": "json_object", "schema": schema}
    assert local_models._llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert local_models._llama_response_format(None) is None
    with pytest.raises(ValueError, match="unsupported response_format"):
        local_models._llama_response_format({"type": "xml"})


# ---------------------------------------------------------------------------------------------------------
# The real model through plain litellm


def _small_model_ready() -> str | None:
    """Why the integration tests cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (scripts/install_llama.sh)"
    try:
        local_models.resolve(SMALL)
    except ModelError as error:
        return str(error)
    return None


@pytest.fixture(scope="module")
def litellm():
    reason = _small_model_ready()
    if reason is not None:
        pytest.skip(reason)
    import litellm

    litellm.suppress_debug_info = True
    local_models.register()
    local_models.register()  # idempotent
    assert sum(item["provider"] == "llamacpp" for item in litellm.custom_provider_map) == 1
    return litellm


def ask(litellm, messages, **kwargs):
    local_models.register()  # other tests may swap litellm's provider list
    kwargs = {"temperature": 0.0, "seed": 0, "max_tokens": 24, **kwargs}
    return litellm.completion(model=f"llamacpp/{SMALL}", messages=messages, **kwargs)


LONG_SYSTEM = (
    "You help a movie recommender. For each review, name the genre, the mood and the pacing of the movie "
    "in a few words each, and never mention titles or actors. Keep your answer short and plain. "
) * 3


@pytest.mark.integration
def test_completion_returns_text_and_usage(litellm):
    response = ask(litellm, [{"role": "user", "content": "Name one colour."}])
    assert isinstance(response.choices[0].message.content, str)
    assert response.choices[0].message.content.strip()
    assert response.choices[0].finish_reason in {"stop", "length"}
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    by_path = litellm.completion(
        model=f"llamacpp/{local_models.resolve(SMALL)}",  # llamacpp//abs/path/model.gguf
        messages=[{"role": "user", "content": "Name one colour."}],
        temperature=0.0,
        seed=0,
        max_tokens=24,
    )
    assert by_path.choices[0].message.content == response.choices[0].message.content


@pytest.mark.integration
def test_json_schema_output_parses_and_matches_the_schema(litellm):
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "is_fruit": {"type": "boolean"},
        },
        "required": ["colour", "is_fruit"],
    }
    response = ask(
        litellm,
        [
            {
                "role": "user",
                "content": "A banana: give its colour (red, green or blue) and say if it is a fruit.",
            }
        ],
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}},
    )
    answer = json.loads(response.choices[0].message.content)
    assert set(answer) == {"colour", "is_fruit"}
    assert answer["colour"] in {"red", "green", "blue"}
    assert isinstance(answer["is_fruit"], bool)


def _ready(name: str) -> str | None:
    try:
        local_models.resolve(name)
    except ModelError as error:
        return str(error)
    return None


EMBEDDED = [
    pytest.param(name, marks=pytest.mark.skipif(_ready(name) is not None, reason=f"{_ready(name)}"))
    for name in local_models.MODELS
]


def proposal_request(document: str) -> list[dict]:
    """A real proposal prompt: system prompt, one worked example, the document."""
    from instruct_lf_dagster.core.proposals import Example, Goal, build_messages

    goal = Goal(
        text="What qualities of a movie make critics recommend it or warn against it?",
        document_kind="movie review snippet",
        examples=(Example("A gorgeous, slow meditation on grief.", ("Slow pacing", "Grief theme")),),
    )
    return build_messages(goal, document)


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_the_same_request_gives_the_same_text_whatever_ran_before(litellm, name):
    from instruct_lf_dagster.core.proposals import RESPONSE_FORMAT

    request, other = (
        proposal_request(d) for d in ("Loud, silly and fast; great car chases.", "A quiet, sad romance.")
    )
    options = {"temperature": 0.0, "seed": 0, "max_tokens": 40, "response_format": RESPONSE_FORMAT}
    local_models.load(name).reset()  # the first call reads the whole prompt: nothing is cached
    first = local_models.chat(name, request, **options)
    local_models.chat(name, other, **options)  # leaves the shared prefix (and its own answer) in the cache
    later = [local_models.chat(name, request, **options) for _ in range(2)]
    assert first["usage"]["cached_tokens"] == 0
    assert all(out["usage"]["cached_tokens"] > 0 for out in later)  # the cached path was taken
    texts = {out["choices"][0]["message"]["content"] for out in [first, *later]}
    assert len(texts) == 1, texts


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_prompt_logits_are_bitwise_the_same_with_and_without_a_cached_prefix(name):
    """The cause, pinned: a token's logits must not depend on how the prompt was split into decode calls."""
    import numpy as np

    llm = local_models.load(name)

    def prompt_logits(messages: list[dict]) -> np.ndarray:
        text = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
        tokens = llm.tokenize(text.encode())
        generation = llm.generate(tokens, temp=0.0)
        next(generation)  # the prompt is evaluated and its last token's logits chose this one
        generation.close()
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    request = proposal_request("A heist comedy with a clever twist, stylish and quick.")
    llm.reset()
    fresh = prompt_logits(request)
    prompt_logits(proposal_request("A war film that is hard to watch."))
    cached = prompt_logits(request)
    assert llm.reused_tokens >= local_models.CHUNK
    assert np.array_equal(fresh, cached)


@pytest.mark.integration
def test_same_seed_gives_the_same_text(litellm):
    messages = [{"role": "user", "content": "Write a short sentence about the sea."}]
    assert (
        ask(litellm, messages).choices[0].message.content == ask(litellm, messages).choices[0].message.content
    )
    sampled = [ask(litellm, messages, temperature=1.0, seed=7).choices[0].message.content for _ in range(2)]
    assert sampled[0] == sampled[1]


@pytest.mark.integration
def test_shared_prefix_is_read_once(litellm):
    import llama_cpp

    llm = local_models.load(SMALL)
    ask(litellm, [{"role": "user", "content": "Something unrelated, to clear the shared prefix."}])
    first = ask(
        litellm,
        [
            {"role": "system", "content": LONG_SYSTEM},
            {"role": "user", "content": "Review: a slow space drama."},
        ],
    )
    llama_cpp.llama_perf_context_reset(llm.ctx)
    before = local_models.counters()
    second = ask(
        litellm,
        [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Review: loud car chases."}],
    )
    done = local_models.counters() - before
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < 10  # the unrelated call shared little
    assert cached >= 0.8 * first.usage.prompt_tokens  # the system prompt is most of the prompt
    assert second.usage.prompt_tokens - cached < first.usage.prompt_tokens / 4
    assert (done.calls, done.cached_tokens, done.prompt_tokens) == (1, cached, second.usage.prompt_tokens)
    # llama.cpp's own count of prompt tokens it evaluated agrees with what the provider reports.
    assert llama_cpp.llama_perf_context(llm.ctx).n_p_eval == second.usage.prompt_tokens - cached


@pytest.mark.integration
def test_truncated_output_and_async_calls_do_not_crash(litellm):
    schema = {"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]}
    response = ask(
        litellm,
        [{"role": "user", "content": "Tell a long story."}],
        max_tokens=3,
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage.completion_tokens == 3
    assert isinstance(response.choices[0].message.content, str)
    local_models.register()
    answer = asyncio.run(
        litellm.acompletion(
            model=f"llamacpp/{SMALL}", messages=[{"role": "user", "content": "Say hi."}], max_tokens=5
        )
    )
    assert answer.usage.completion_tokens > 0


@pytest.mark.integration
def test_clear_errors_for_bad_models_and_long_prompts(litellm, tmp_path):
    with pytest.raises(litellm.NotFoundError, match="unknown model 'no-such-model'"):
        litellm.completion(model="llamacpp/no-such-model", messages=[{"role": "user", "content": "hi"}])
    missing = tmp_path / "missing.gguf"
    with pytest.raises(litellm.NotFoundError, match="model file not found"):
        litellm.completion(model=f"llamacpp/{missing}", messages=[{"role": "user", "content": "hi"}])
    too_long = "word " * (local_models.N_CTX + 100)
    with pytest.raises(litellm.ContextWindowExceededError, match="does not fit the context of 4096 tokens"):
        ask(litellm, [{"role": "user", "content": too_long}])
    with pytest.raises(litellm.BadRequestError, match="unsupported response_format"):
        ask(litellm, [{"role": "user", "content": "hi"}], response_format={"type": "xml"})
    assert ask(litellm, [{"role": "user", "content": "Still working?"}]).usage.completion_tokens > 0


@pytest.mark.integration
def test_fast_grammar_sampling_picks_the_same_tokens_as_llama_cpp(litellm):
    from llama_cpp import Llama

    from instruct_lf_dagster.bench.llm import DOCUMENTS, MAX_TOKENS, RESPONSE_FORMAT, messages_for

    options = {"temperature": 0.0, "seed": 0, "max_tokens": MAX_TOKENS}
    reference = Llama(str(local_models.resolve(SMALL)), n_ctx=1024, verbose=False)
    for document in DOCUMENTS[1:3]:
        messages = messages_for(document)
        ours = local_models.chat(SMALL, messages, response_format=RESPONSE_FORMAT, **options)
        theirs = reference.create_chat_completion(
            messages, response_format=local_models._llama_response_format(RESPONSE_FORMAT), **options
        )
        assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
        if ours["choices"][0]["finish_reason"] == "stop":
            assert "properties" in json.loads(ours["choices"][0]["message"]["content"])
    reference.close()
