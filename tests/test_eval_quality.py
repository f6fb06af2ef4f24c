"""`instruct-lf eval quality`: every method fitted on one corpus, read as topics and judged alike."""

from __future__ import annotations

import argparse
import json

import pytest

from instruct_lf_dagster.evaluation import quality
from instruct_lf_dagster.settings import Settings
from tests.test_eval_probe import reviews, write


def args_for(path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data", str(path), "--text-field", "review", "--goal", "What kind of movie is this?",
            "--document-kind", "movie review", "--model", "keywords/fake", "--linker-epochs", "1",
            "--topics", "5", "--members", "3", "--topicgpt-sample", "6", "--topicgpt-assign", "12", "--proposal-docs", "16", *extra,
        ]
    )  # fmt: skip
    args.settings = Settings.from_env()
    args.home = args.settings.home
    return args


def test_a_file_needs_a_goal_and_known_methods(tmp_path):
    path = tmp_path / "reviews.jsonl"
    write(reviews(8), path)
    args = args_for(path)
    args.goal = None
    with pytest.raises(SystemExit, match="--goal"):
        quality.main(args)
    with pytest.raises(SystemExit, match="unknown"):
        quality.main(args_for(path, "--methods", "lda,word2vec"))


@pytest.mark.integration
def test_every_method_is_judged_alike_and_a_rerun_asks_nothing(tmp_path, keyword_llm, capsys):
    path = tmp_path / "reviews.jsonl"
    write(reviews(), path)
    first = quality.main(args_for(path))
    out = capsys.readouterr().out.strip().splitlines()
    assert json.loads(out[-1]) == first
    assert out[0].split()[:5] == ["method", "intrusion", "relevance", "coherence", "distinctiveness"]
    assert {"instruct_lf", "lda", "topicgpt"} <= set(first["quality"])
    for method, judged in first["quality"].items():
        assert 0 < judged["topics_judged"] <= 5 or method == "bertopic", method
        # Two judge batches per method: one intrusion question per judged topic with enough members, one
        # relevance question per judged topic.
        assert judged["judge_calls"] <= 2 * judged["topics_judged"]
    # instruct_lf's factors are named: the names the fake gives ("All about ...") are what the judge read.
    assert any("All about" in line for line in out if line.startswith("  "))
    for judged in first["quality"].values():
        assert all(
            judged[k] is None or 0 <= judged[k] <= 1 for k in ("intrusion", "relevance", "distinctiveness")
        )
    # Proposals, then one naming call per judged factor (and a retry for an answer refused as saying little).
    named = first["cost"]["instruct_lf"]["llm_calls"] - 16
    assert (
        first["quality"]["instruct_lf"]["topics_judged"]
        <= named
        <= 2 * first["quality"]["instruct_lf"]["topics_judged"]
    )
    assert first["cost"]["lda"]["llm_calls"] == 0
    calls = keyword_llm.calls
    second = quality.main(args_for(path))
    assert keyword_llm.calls == calls  # proposals, names, topicgpt and the judge: all from the cache
    assert second["quality"] == first["quality"]
