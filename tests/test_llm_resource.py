"""LLMResource: config reaches the client, EnvVar keys resolve and never show, the cache lives in the data dir."""

import json

import dagster as dg
import pytest

from instruct_lf_dagster.core.llm import LLMClient
from instruct_lf_dagster.resources.llm import DEFAULT_MODEL, LLMResource

SECRET = "sk-resource-secret-42"


def test_config_reaches_the_client(tmp_path):
    resource = LLMResource(
        model="openai/gpt-4o-mini",
        api_base="http://127.0.0.1:9/v1",
        temperature=0.3,
        max_tokens=64,
        timeout=5.0,
        retries=1,
        max_concurrency=2,
        budget_usd=0.5,
        budget_tokens=1000,
        cache_path=str(tmp_path / "cache.duckdb"),
        seed=11,
    )
    client = resource.get_client()
    assert isinstance(client, LLMClient)
    assert (client.model, client.api_base, client.temperature, client.max_tokens) == (
        "openai/gpt-4o-mini",
        "http://127.0.0.1:9/v1",
        0.3,
        64,
    )
    assert (client.timeout, client.retries, client.max_concurrency, client.seed) == (5.0, 1, 2, 11)
    assert (client.budget_usd, client.budget_tokens) == (0.5, 1000)
    assert client.cache.path == str(tmp_path / "cache.duckdb") and (tmp_path / "cache.duckdb").exists()


def test_default_cache_lives_in_the_data_dir(data_home):
    client = LLMResource().get_client()
    assert client.model == DEFAULT_MODEL and client.max_concurrency == 1  # the embedded model
    assert client.cache.path == str(data_home / "llm_cache.duckdb")
    assert (data_home / "llm_cache.duckdb").exists()


def test_env_var_key_resolves_and_never_shows(monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_LLM_KEY", SECRET)
    resource = LLMResource(model="openai/gpt-4o-mini", api_key=dg.EnvVar("TEST_LLM_KEY"))

    # Used directly (scripts, benchmarks) and as Dagster initialises it for a run.
    assert resource.get_client()._api_key == SECRET
    with dg.build_resources({"llm": resource}) as resources:
        client = resources.llm.get_client()
        assert client._api_key == SECRET
        shown = [repr(resources.llm), str(resources.llm), repr(client), json.dumps(client.describe())]
    shown += [repr(resource), str(resource)]
    assert not any(SECRET in text for text in shown)


@pytest.mark.integration
def test_resource_serves_an_asset(monkeypatch):
    """An asset gets a working client from the resource and reports usage without the key."""
    monkeypatch.setenv("TEST_LLM_KEY", SECRET)

    @dg.asset
    def answers(context: dg.AssetExecutionContext, llm: LLMResource) -> list[str]:
        client = llm.get_client()
        client.litellm_kwargs["mock_response"] = "a property"  # no provider is reached in tests
        completions, usage = client.complete([[{"role": "user", "content": "hi"}]])
        context.add_output_metadata({**usage.as_metadata(), **client.describe()})
        return [c.text for c in completions]

    # An instance of its own: Dagster keeps the current instance's state storage in a context variable.
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [answers],
            resources={"llm": LLMResource(model="openai/gpt-4o-mini", api_key=dg.EnvVar("TEST_LLM_KEY"))},
            instance=instance,
        )
    assert result.success
    assert result.output_for_node("answers") == ["a property"]
    metadata = result.asset_materializations_for_node("answers")[0].metadata
    assert metadata["calls"].value == 1 and metadata["model"].value == "openai/gpt-4o-mini"
    assert not any(SECRET in str(value.value) for value in metadata.values())
