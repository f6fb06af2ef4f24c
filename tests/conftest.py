"""Shared fixtures: a private data directory for every test, a real S3-compatible server on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from instruct_lf_dagster.settings import offline

offline()  # before any test imports litellm

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def data_home(tmp_path, monkeypatch) -> Path:
    """Each test gets its own INSTRUCT_LF_HOME so no test sees another's DuckDB file or artefacts."""
    home = tmp_path / "home"
    monkeypatch.setenv("INSTRUCT_LF_HOME", str(home))
    # Embedded models live in the user's data directory; tests reuse them instead of assembling again.
    models = Path(os.environ.get("INSTRUCT_LF_MODELS", Path.cwd() / "data" / "models"))
    if models.exists():
        home.mkdir(parents=True, exist_ok=True)
        (home / "models").symlink_to(models.resolve())
    return home


@pytest.fixture(autouse=True)
def no_stale_dagster_instance():
    """Start every test without a Dagster definitions-state storage left set by an earlier test's instance.

    An instance sets a process-wide storage when entered; one entered by an earlier test (a fixture torn down
    in another context) can leave it pointing at a closed instance, and loading definitions then fails with
    "Attempted to resolve undefined DagsterInstance weakref" (Dagster 1.13 has no public reset).
    """
    from dagster._core.storage.defs_state.base import set_defs_state_storage

    with set_defs_state_storage(None):
        yield


def run_warning_free(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh Python process, with a home under `tmp_path` and Dagster's beta and preview
    warnings, user warnings and this package's deprecations raised as errors; returns its stdout.

    What a process prints once on import (a notebook, each Dagster process) only shows in a new process."""
    import subprocess
    import sys

    guard = (
        "import warnings; import dagster as dg\n"
        "for kind in (UserWarning, dg.BetaWarning, dg.PreviewWarning): warnings.simplefilter('error', kind)\n"
        "warnings.filterwarnings('error', category=DeprecationWarning, module='instruct_lf_dagster')\n"
    )
    env = {**os.environ, "INSTRUCT_LF_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", guard + code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]  # a warning is raised as an error here
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (the same boto3 code path as production)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the local S3 server; returns (S3Resource, bucket name)."""
    import uuid

    from dagster_aws.s3 import S3Resource

    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.get_client().create_bucket(Bucket=bucket)
    return s3, bucket


THEMES = {
    "laugh": "Comedy genre",
    "funny": "Comedy genre",
    "scary": "Horror genre",
    "ghost": "Supernatural elements",
    "love": "Romance",
    "kiss": "Romance",
    "explosion": "Action scenes",
    "chase": "Action scenes",
    "slow": "Slow pacing",
    "boring": "Slow pacing",
    "actor": "Strong performances",
    "brilliant": "Strong performances",
}


class KeywordLLM:
    """A deterministic fake LLM served through litellm: properties are the themes of keywords in the document.

    Registered as litellm custom provider `keywords`, so the real client, cache and accounting are exercised;
    `calls` counts what reached the 'model'.
    """

    def __init__(self):
        import litellm

        handler = self

        class Handler(litellm.CustomLLM):
            def completion(self, *args, **kwargs):
                return handler.answer(kwargs["messages"])

        self.calls = 0
        self.requests: list[list[dict]] = []  # the messages of every call that reached the 'model'
        self.handler = Handler()

    @property
    def proposal_calls(self) -> int:
        """Calls that asked for a document's properties (the others named factors or judged them)."""
        return sum(
            not m[0]["content"].startswith(("You name the latent ", "You judge ")) for m in self.requests
        )

    def answer(self, messages):
        import json
        import re

        import litellm

        self.calls += 1
        self.requests.append(messages)
        if messages[0]["content"].startswith("You name the latent "):  # naming: after its top property
            top = messages[-1]["content"].split(": ", 1)[1].split(";")[0].split("\n")[0].strip()
            answer = {"name": f"All about {top}", "description": f"Documents where {top.lower()} stands out."}
            return litellm.completion(
                model="openai/fake", messages=messages, mock_response=json.dumps(answer)
            )
        system = messages[0]["content"]
        text = messages[-1]["content"].lower()
        props = sorted({theme for word, theme in THEMES.items() if word in text}) or ["General audience"]
        answer: dict = {"properties": props}
        if system.startswith(("You build the list of topics", "You assign")):  # the topicgpt peer
            word = next((w for w in THEMES if w in text), None)
            answer = {"topic": props[0], "description": f"Documents about {props[0].lower()}.", "quote": word}
        elif system.startswith("You merge"):
            label = re.sub(r"^\[\d+\]\s*", "", messages[-1]["content"].split("\n")[0]).split(":")[0]
            answer = {"topic": label.strip(), "description": "Merged."}
        elif system.startswith("You judge groups"):  # the intrusion test: always the first option
            answer = {"intruder": 1}
        elif system.startswith("You judge topics"):
            answer = {"relevant": "general" not in text}
        return litellm.completion(model="openai/fake", messages=messages, mock_response=json.dumps(answer))


@pytest.fixture
def keyword_llm():
    import litellm

    fake = KeywordLLM()
    previous = list(litellm.custom_provider_map)
    litellm.custom_provider_map = [p for p in previous if p["provider"] != "keywords"] + [
        {"provider": "keywords", "custom_handler": fake.handler}
    ]
    litellm.utils.custom_llm_setup()
    yield fake
    litellm.custom_provider_map = previous
    litellm.utils.custom_llm_setup()
