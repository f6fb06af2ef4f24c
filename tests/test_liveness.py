"""No run waits on a dead one: dead runs are failed and their pool slots freed, a second `instruct-lf run` on a
home waits for the first (saying so) and goes on once it is gone, and a wait for a pool slot is said aloud."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test  # the one way to store a run without executing it

from instruct_lf_dagster import liveness

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_run_whose_process_died_is_failed_and_its_slots_freed():
    with dg.instance_for_test() as instance:
        here = socket.gethostname()
        dead = create_run_for_test(
            instance,
            job_name="all_discoveries",
            status=dg.DagsterRunStatus.STARTED,
            tags={liveness.PID_TAG: str(dead_pid()), liveness.HOST_TAG: here},
        )
        alive = create_run_for_test(
            instance,
            job_name="all_discoveries",
            status=dg.DagsterRunStatus.STARTED,
            tags={liveness.PID_TAG: str(os.getppid()), liveness.HOST_TAG: here},
        )
        elsewhere = create_run_for_test(
            instance,
            job_name="all_discoveries",
            status=dg.DagsterRunStatus.STARTED,
            tags={liveness.PID_TAG: str(dead_pid()), liveness.HOST_TAG: "another-host"},
        )
        storage = instance.event_log_storage
        storage.set_concurrency_slots("llm", 1)
        storage.claim_concurrency_slot("llm", dead.run_id, "movie_critics__proposals")
        assert liveness.held_slots(instance) == {"llm": {dead.run_id}}

        said: list[str] = []
        assert liveness.release_dead_runs(instance, said.append) == [dead.run_id]
        assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
        assert "marked failed, its pool slots freed" in said[0] and dead.run_id in said[0]
        assert liveness.held_slots(instance) == {}
        # a live process, and a process on another machine (its liveness is not ours to judge), are left alone
        for run in (alive, elsewhere):
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED


def test_a_wait_for_a_pool_slot_says_which_run_holds_it():
    with dg.instance_for_test() as instance:
        holder = create_run_for_test(instance, job_name="x", status=dg.DagsterRunStatus.STARTED)
        storage = instance.event_log_storage
        storage.set_concurrency_slots("duckdb", 1)
        storage.claim_concurrency_slot("duckdb", holder.run_id, "step")
        said: list[str] = []
        threading.Timer(1.5, storage.free_concurrency_slots_for_run, [holder.run_id]).start()
        started = time.monotonic()
        liveness.wait_for_pools(instance, said.append, every=0.5, poll=0.1)
        assert 1.0 < time.monotonic() - started < 10
        assert said and f"pool 'duckdb' held by run(s) {holder.run_id}" in said[0]


def test_a_second_run_on_a_home_waits_for_the_first_and_goes_on_when_it_dies(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from instruct_lf_dagster import liveness\n"
            "with liveness.home_lock(Path(sys.argv[1]), print):\n"
            "    print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        said: list[str] = []
        done = threading.Event()

        def second() -> None:
            with liveness.home_lock(tmp_path, said.append, every=0.5, poll=0.1):
                done.set()

        thread = threading.Thread(target=second, daemon=True)
        thread.start()
        time.sleep(1.5)
        assert not done.is_set() and f"instruct-lf run (pid {holder.pid})" in said[0]
        holder.send_signal(signal.SIGKILL)  # the lock goes with the process: nothing to clean up
        assert done.wait(10)
    finally:
        holder.kill()
        holder.wait()


class SlowModel(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat endpoint answering every request after a pause, with properties from keywords."""

    delay = 0.6

    def do_POST(self) -> None:  # noqa: N802 (the handler's API)
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.delay)
        text = request["messages"][-1]["content"].lower()
        if request["messages"][0]["content"].startswith("You name the latent "):
            content = {"name": "A factor", "description": "Reviews that share it."}
        else:
            content = {"properties": ["Funny scenes" if "funny" in text else "Slow pacing", "Strong acting"]}
        body = json.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "fake",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": json.dumps(content)},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.mark.integration
def test_a_run_killed_mid_step_does_not_hold_up_the_next(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowModel)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inbox = tmp_path / "home" / "inbox"
    inbox.mkdir(parents=True)
    reviews = ["A funny film.", "Slow and long.", "Funny, warm, well acted.", "Dull.", "Funny again."] * 2
    (inbox / "part1.jsonl").write_text(
        "\n".join(json.dumps({"id": f"r{i}", "text": t}) for i, t in enumerate(reviews))
    )
    env = {
        **os.environ,
        "INSTRUCT_LF_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "INSTRUCT_LF_LLM_MODEL": "openai/fake",
        "INSTRUCT_LF_LLM_API_BASE": f"http://127.0.0.1:{server.server_port}/v1",
        "OPENAI_API_KEY": "not-needed",  # the fake endpoint takes any key; the OpenAI client wants one
    }
    command = [sys.executable, "-m", "instruct_lf_dagster.cli", "run"]
    try:
        first = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in first.stdout:  # killed in the middle of proposals, holding the llm pool's slot
            if "proposals: " in line and "/10" in line:
                first.send_signal(signal.SIGKILL)
                break
        first.wait(60)
        (inbox / "part2.jsonl").write_text("{broken\n")  # a bad file, for the summary
        second = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
        output = second.stdout + second.stderr
        # the discovery ran on the readable batch; the summary names the bad file's batch, and the exit code tells
        assert second.returncode == 1, output[-3000:]
        assert "Not done:" in output, output[-4000:]
        summary = output[output.index("Not done:") :]
        assert "  - batch part2" in summary and "its file could not be read" in summary
        assert f"had died with its process {first.pid}: marked failed, its pool slots freed" in output
        assert "latent factors by theme" in output
    finally:
        server.shutdown()
