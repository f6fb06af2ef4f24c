"""LLMResource: LLMConfig's settings in Dagster's config, EnvVar keys resolve and never show, the cache and the
embedded models live where the resource says."""

import json
import sys
import types

import dagster as dg
import pydantic
import pytest

import instruct_lf_dagster
from instruct_lf_dagster.components import Discovery
from instruct_lf_dagster.core.llm import DEFAULT_MODEL, Completion, LLMClient, LLMConfig
from instruct_lf_dagster.core.llm.transport import load_litellm
from instruct_lf_dagster.resources.llm import LLMResource
from instruct_lf_dagster.resources.storage import LocalStorage

SECRET = "sk-resource-secret-42"


def test_config_reaches_the_client(tmp_path):
    settings = {
        "model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "temperature": 0.3,
        "max_tokens": 64,
        "timeout": 5.0,
        "timeout_per_token": 0.5,
        "batch_deadline": 60.0,
        "retries": 1,
        "max_concurrency": 2,
        "budget_usd": 0.5,
        "budget_tokens": 1000,
        "seed": 11,
    }
    resource = LLMResource(**settings, cache_path=str(tmp_path / "cache.duckdb"))
    client = resource.get_client()
    assert isinstance(client, LLMClient) and type(client.config) is LLMConfig
    assert client.config == LLMConfig(**settings)
    assert client.config.call_timeout == 5.0 + 0.5 * 64
    assert client.max_concurrency == 2
    assert client.cache.path == str(tmp_path / "cache.duckdb") and (tmp_path / "cache.duckdb").exists()


def test_without_a_cache_path_the_cache_is_in_memory(data_home):
    client = LLMResource().get_client()
    assert client.model == DEFAULT_MODEL and client.max_concurrency == 1  # the embedded model
    assert client.cache.path == ":memory:"
    assert not (data_home / "llm_cache.duckdb").exists()  # no file the resource was not told about


def test_the_settings_are_llm_configs_declared_once(monkeypatch):
    for name, field in LLMConfig.model_fields.items():
        inherited = LLMResource.model_fields[name]
        assert (inherited.default, inherited.description) == (field.default, field.description), name
    with pytest.raises(pydantic.ValidationError):  # LLMConfig's range checks hold in the resource
        LLMResource(temperature=-1.0)
    with pytest.raises(pydantic.ValidationError):
        LLMResource(max_concurency=2)

    # What Dagster's UI shows: every setting, with its description and default.
    fields = LLMResource.to_config_schema().as_field().config_type.fields
    own = {"api_key", "max_documents_per_batch", "cache_path", "models_home", "llm_threads"}
    assert set(fields) == set(LLMConfig.model_fields) | own
    assert fields["max_tokens"].default_value == 256 and fields["max_tokens"].description
    assert fields["model"].default_value == DEFAULT_MODEL

    monkeypatch.setenv("TEST_LLM_KEY", SECRET)
    resource = LLMResource(model="openai/gpt-4o-mini", api_key=dg.EnvVar("TEST_LLM_KEY"), budget_usd=1.0)
    dg.Definitions.validate_loadable(dg.Definitions(resources={"llm": resource}))


def test_embedded_models_register_from_models_home_when_a_request_is_sent(monkeypatch, tmp_path):
    litellm = load_litellm()
    real = litellm.completion
    # The fake registers no provider: a priced model answers the mock instead.
    monkeypatch.setattr(litellm, "completion", lambda **kw: real(**{**kw, "model": "gpt-4o-mini"}))
    registered = []
    fake = types.SimpleNamespace(register=lambda home, threads: registered.append((home, threads)))
    monkeypatch.setitem(sys.modules, "instruct_lf_dagster.models", fake)
    monkeypatch.setattr(instruct_lf_dagster, "models", fake, raising=False)

    resource = LLMResource(model="llamacpp/smollm2-135m", models_home=str(tmp_path), llm_threads=3)
    client = resource.get_client()
    client.litellm_kwargs["mock_response"] = "ok"
    client.cache.put(client.key([{"role": "user", "content": "seen"}]), Completion(text="from cache"))
    client.complete([[{"role": "user", "content": "seen"}]])
    assert registered == []  # answered from the cache: llama.cpp is not needed
    completions, _ = client.complete([[{"role": "user", "content": "new"}]])
    assert completions[0].text == "ok" and registered == [(tmp_path, 3)]

    unset = LLMResource(model="llamacpp/smollm2-135m").get_client()
    with pytest.raises(ValueError, match="models_home is not set"):
        unset.complete([[{"role": "user", "content": "new"}]])
    assert LLMResource(model="openai/gpt-4o-mini").get_client()._prepare is None  # hosted: nothing to load


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
    assert (same.config.api_base, same._api_key) == ("http://vllm:8000/v1", SECRET)
    other = resource.get_client(model="openai/gpt-4o-mini")
    # Neither is sent: litellm reads the provider's own variable.
    assert (other.config.api_base, other._api_key) == (None, None)
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
    storage = LocalStorage(home=str(tmp_path / "home"))
    with pytest.raises(dg.Failure, match="churn: llm.api_key_env names NO_SUCH_LLM_KEY, which is not set"):
        resource.client_for(d.name, d.llm, storage.response_cache())
    monkeypatch.setenv("NO_SUCH_LLM_KEY", SECRET)
    assert resource.client_for(d.name, d.llm, storage.response_cache())._api_key == SECRET


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
            # As the launchpad would: run config replaces the resource's values, inherited settings included.
            run_config={
                "resources": {
                    "llm": {
                        "config": {
                            "model": "openai/gpt-4o-mini",
                            "api_key": {"env": "TEST_LLM_KEY"},
                            "max_tokens": 32,
                        }
                    }
                }
            },
            instance=instance,
        )
    assert result.success
    assert result.output_for_node("answers") == ["a property"]
    metadata = result.asset_materializations_for_node("answers")[0].metadata
    assert metadata["calls"].value == 1 and metadata["model"].value == "openai/gpt-4o-mini"
    assert metadata["max_tokens"].value == 32
    assert not any(SECRET in str(value.value) for value in metadata.values())
