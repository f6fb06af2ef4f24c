"""Reliability trials of `instruct-lf run`, as a user meets them: prints a table (trial, what happened, seconds).

Each trial runs the real command line in a fresh home against an OpenAI-compatible stand-in on 127.0.0.1 (it
answers after a pause, never answers, or is not there), so no model is needed. Usage, from the repository root
with the project's virtual environment active: `python scripts/reliability_trials.py` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tabulate import tabulate

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ["A funny film.", "Slow and long.", "Funny, warm, well acted.", "Dull.", "Funny again."] * 2


class Answering(BaseHTTPRequestHandler):
    """Answers a chat completion after a short pause, with properties from keywords."""

    delay = 0.5

    def do_POST(self) -> None:  # noqa: N802 (the handler's API)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        text = request["messages"][-1]["content"].lower()
        if request["messages"][0]["content"].startswith("You name the latent "):
            content = {"name": "A factor", "description": "Reviews that share it."}
        else:
            content = {"properties": ["Funny scenes" if "funny" in text else "Slow pacing", "Strong acting"]}
        message = {"role": "assistant", "content": json.dumps(content)}
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "stand-in",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        ).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the trial killed the client: expected
            pass

    def log_message(self, *args) -> None:
        pass


class Silent(Answering):
    """Accepts the request and never answers (until the trial ends)."""

    def do_POST(self) -> None:  # noqa: N802
        time.sleep(600)


def serve(handler: type) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def home(base: Path, name: str, files: dict[str, str] | None = None) -> Path:
    folder = base / name
    (folder / "home" / "inbox").mkdir(parents=True)
    lines = "\n".join(json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(REVIEWS))
    for file_name, text in (files or {"part1.jsonl": lines}).items():
        (folder / "home" / "inbox" / file_name).write_text(text)
    return folder


def environment(folder: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "INSTRUCT_LF_HOME": str(folder / "home"),
        "DAGSTER_HOME": str(folder / "dagster"),
        "INSTRUCT_LF_LLM_MODEL": "openai/stand-in",
        "INSTRUCT_LF_LLM_API_BASE": f"http://127.0.0.1:{port}/v1",
        "OPENAI_API_KEY": "not-needed",
        **extra,
    }


COMMAND = [sys.executable, "-m", "instruct_lf_dagster.cli", "run"]


def run(env: dict[str, str], timeout: float = 900) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run(COMMAND, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def last_lines(output: str, marker: str) -> str:
    """The first line holding `marker`, shortened, as the trial's evidence."""
    line = next((line for line in output.splitlines() if marker in line), "(not found)")
    return line.split(" - ")[-1][:150]


def killed_then_rerun(base: Path, port: int) -> tuple[str, float]:
    folder = home(base, "killed")
    env = environment(folder, port)
    first = subprocess.Popen(
        COMMAND, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in first.stdout:
        if "proposals: 4/10" in line:
            first.send_signal(signal.SIGKILL)
            break
    first.wait()
    code, output, seconds = run(env)
    return f"rc {code}; {last_lines(output, 'had died')}", seconds


def two_at_once(base: Path, port: int) -> tuple[str, float]:
    folder = home(base, "two")
    env = environment(folder, port)
    started = time.monotonic()
    first = subprocess.Popen(COMMAND, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(8)
    code, output, _ = run(env)
    first.wait()
    trained = output.count("linker: epoch 1 ")
    return f"rc {code}; {last_lines(output, 'waiting for')}; linker trained {trained}x by the second", (
        time.monotonic() - started
    )


def sigterm_with_sigint_ignored(base: Path, port: int) -> tuple[str, float]:
    folder = home(base, "sigterm")
    env = environment(folder, port)
    shell = f"trap '' INT; exec {' '.join(COMMAND)}"
    process = subprocess.Popen(
        ["bash", "-c", shell], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for line in process.stdout:
        if "proposals: 2/10" in line:
            break
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(120)
    return f"stopped, rc {code}", time.monotonic() - started


def silent_endpoint(base: Path, _: int) -> tuple[str, float]:
    server = serve(Silent)
    try:
        folder = home(base, "silent")
        code, output, seconds = run(environment(folder, server.server_port))
        return f"rc {code}; {last_lines(output, 'Failure')}", seconds
    finally:
        server.shutdown()


def refused_endpoint(base: Path, _: int) -> tuple[str, float]:
    folder = home(base, "refused")
    code, output, seconds = run(environment(folder, free_port()))
    return f"rc {code}; {last_lines(output, 'Failure')}", seconds


def colliding_names(base: Path, port: int) -> tuple[str, float]:
    lines = [json.dumps({"id": f"{n}{i}", "text": t}) for n in "ab" for i, t in enumerate(REVIEWS[:3])]
    files = {"with space.jsonl": "\n".join(lines[:3]), "with_space.jsonl": "\n".join(lines[3:])}
    folder = home(base, "names", files)
    code, output, seconds = run(environment(folder, port))
    read = [line.split(" - ")[-1].split(" (")[0] for line in output.splitlines() if ": 3 documents (" in line]
    return f"rc {code}; {len(read)} batches: " + "; ".join(read), seconds


def damaged_cache(base: Path, port: int) -> tuple[str, float]:
    folder = home(base, "cache")
    (folder / "home" / "llm_cache.duckdb").write_bytes(b"not a database" * 100)
    code, output, seconds = run(environment(folder, port))
    return f"rc {code}; {last_lines(output, 'damaged')}", seconds


def broken_file(base: Path, port: int) -> tuple[str, float]:
    good = "\n".join(json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(REVIEWS))
    folder = home(base, "broken", {"part1.jsonl": good, "part2.jsonl": "{broken\n"})
    code, output, seconds = run(environment(folder, port))
    error = next((line for line in output.splitlines() if " - ERROR - " in line and "part2" in line), "")
    return f"rc {code}; {error.split(' - ')[-1][:120]}; summary: {last_lines(output, '  - batch')}", seconds


def copied_home(base: Path, port: int) -> tuple[str, float]:
    import duckdb

    folder = home(base, "original")
    code, _, _ = run(environment(folder, port))
    copy = base / "copy"
    shutil.copytree(folder, copy)
    shutil.rmtree(folder)
    started = time.monotonic()
    code, _, _ = run(environment(copy, port))
    with duckdb.connect(str(copy / "home" / "instruct_lf.duckdb"), read_only=True) as con:
        rows = con.sql("select count(*) from documents").fetchall()[0][0]
    return (
        f"rc {code}; the copy's `from documents`: {rows} rows, original deleted",
        time.monotonic() - started,
    )


TRIALS = {
    "run killed (SIGKILL) in proposals, then run again": killed_then_rerun,
    "two `instruct-lf run` on one home at once": two_at_once,
    "SIGTERM to a run started with SIGINT ignored": sigterm_with_sigint_ignored,
    "endpoint accepts and never answers": silent_endpoint,
    "endpoint refuses the connection": refused_endpoint,
    "`with space.jsonl` and `with_space.jsonl`": colliding_names,
    "damaged llm_cache.duckdb": damaged_cache,
    "a file of broken JSON beside a good one": broken_file,
    "home copied, original deleted, run in the copy": copied_home,
}


def main() -> None:
    """Run every trial (or those whose names contain one of the command-line arguments)."""
    server = serve(Answering)
    rows = []
    chosen = {n: t for n, t in TRIALS.items() if not sys.argv[1:] or any(a in n for a in sys.argv[1:])}
    with tempfile.TemporaryDirectory(prefix="instruct-lf-trials-") as tmp:
        for name, trial in chosen.items():
            print(f"trial: {name}", file=sys.stderr, flush=True)
            try:
                happened, seconds = trial(Path(tmp), server.server_port)
            except Exception as error:  # a trial that breaks is a finding too
                happened, seconds = f"trial broke: {type(error).__name__}: {error}", float("nan")
            rows.append((name, happened, round(seconds, 1)))
    server.shutdown()
    print(tabulate(rows, headers=("trial", "what happened", "seconds"), tablefmt="github"))
    print(json.dumps({name: {"what": what, "seconds": s} for name, what, s in rows}))


if __name__ == "__main__":
    main()
