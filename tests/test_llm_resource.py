"""LLMResource: config reaches the client, EnvVar keys resolve and never show, the cache lives in the data dir."""

import json

import dagster as dg
import pytest

from instruct_lf_dagster.assets.proposals import client_for
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.core.llm import LLMClient
from instruct_lf_dagster.resources.llm import DEFAULT_MODEL, LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage

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


def test_a_discovery_model_gets_neither_the_environment_endpoint_nor_its_key(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", SECRET)
    resource = LLMResource(
        model="hosted_vllm/qwen", api_base="http://vllm:8000/v1", api_key=dg.EnvVar("TEST_LLM_KEY")
    )
    same = resource.get_client(model="hosted_vllm/qwen")
    assert (same.api_base, same._api_key) == ("http://vllm:8000/v1", SECRET)
    other = resource.get_client(model="openai/gpt-4o-mini")
    assert (other.api_base, other._api_key) == (None, None)  # litellm reads the provider's own variable
    assert resource.get_client(model="openai/gpt-4o-mini", api_key="sk-own")._api_key == "sk-own"


def test_a_discovery_key_variable_that_is_not_set_fails_naming_it(monkeypatch, tmp_path):
    monkeypatch.delenv("NO_SUCH_LLM_KEY", raising=False)
    d = Discovery.resolve_from_dict(
        {
            "name": "churn",
            "goal": "Why?",
            "llm": {"model": "openai/gpt-4o-mini", "api_key_env": "NO_SUCH_LLM_KEY"},
        }
    )
    resource = LLMResource(cache_path=str(tmp_path / "cache.duckdb"))
    storage = LocalStorage(database=str(tmp_path / "t.duckdb"))
    with pytest.raises(dg.Failure, match="churn: llm.api_key_env names NO_SUCH_LLM_KEY, which is not set"):
        client_for(d, resource, storage)
    monkeypatch.setenv("NO_SUCH_LLM_KEY", SECRET)
    assert client_for(d, resource, storage)._api_key == SECRET


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
