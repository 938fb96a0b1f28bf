"""LoRA through the Pipeline: per-request adapter sets without reloads, the folder library's LRU,
batches, step caching."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_lora_runtime import adapter

from omnidit import Pipeline
from omnidit.dit import lora
from omnidit.dit.cache import FirstBlockCache
from omnidit.request import RequestError

PROMPTS = ["a red circle", "a blue square"]
KW = {"steps": 3, "height": 32, "width": 32}


@pytest.fixture()
def pipe(tiny_model_dirs):
    return Pipeline.from_pretrained(tiny_model_dirs["euler"], device="cpu")


def latents(pipe, **kw):
    return pipe.generate_latents(PROMPTS[:1], seeds=[1], **KW, **kw)[0]


def test_switch_per_request_without_reloading(pipe):
    base = latents(pipe)
    pipe.load_lora(adapter(pipe.dit, 1), name="a")
    pipe.load_lora(adapter(pipe.dit, 2), name="b")
    st = lora.state(pipe.dit)
    assert st.loads == 2
    with_a = latents(pipe, loras={"a": 1.0})
    with_b = latents(pipe, loras={"b": 0.8})
    both = latents(pipe, loras={"a": 1.0, "b": 0.8})
    none = latents(pipe, loras={})
    assert torch.equal(none, base)  # no adapter: exactly the base model
    for x, y in [(with_a, base), (with_b, base), (with_a, with_b), (both, with_a)]:
        assert not torch.allclose(x, y, atol=1e-4)
    assert torch.equal(latents(pipe, loras={"a": 1.0}), with_a)  # back to a: same result
    assert torch.equal(latents(pipe, loras={"a": 1.0, "b": 0.0}), with_a)  # scale 0 is "off"
    assert st.loads == 2  # every switch above reused the loaded adapters
    assert st.active == {"a": 1.0, "b": 1.0}  # a request's set does not outlive it
    gen = pipe.generate(PROMPTS[0], seed=1, loras={"b": 0.8}, **KW)
    assert gen.info["lora"] == {"b": 0.8}
    with pytest.raises(RequestError, match=r"unknown adapter 'c'; available: \['a', 'b'\]") as e:
        latents(pipe, loras={"c": 1.0})
    assert e.value.field == "lora"
    with pytest.raises(RequestError, match=r"lora\['a'\] must be a number"):
        latents(pipe, loras={"a": "x"})


def test_batch_of_one_adapter_set_equals_each_alone(pipe):
    pipe.load_lora(adapter(pipe.dit, 3), name="a")
    batch = pipe.generate_latents(PROMPTS, seeds=[4, 5], loras={"a": 0.5}, **KW)[0]
    for i, (p, s) in enumerate(zip(PROMPTS, [4, 5])):
        alone = pipe.generate_latents([p], seeds=[s], loras={"a": 0.5}, **KW)[0]
        assert torch.allclose(batch[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_composes_with_step_caching(pipe):
    pipe.load_lora(adapter(pipe.dit, 4), name="a")
    want = latents(pipe, loras={"a": 1.0})
    assert torch.equal(latents(pipe, loras={"a": 1.0}, cache=FirstBlockCache(0.0)), want)  # threshold 0: exact
    assert not torch.allclose(latents(pipe, loras={}, cache=FirstBlockCache(0.0)), want, atol=1e-4)


def test_library_loads_on_demand_and_evicts_least_recently_used(pipe, tmp_path):
    for i, name in enumerate(["one", "two", "three"]):
        save_file(adapter(pipe.dit, 10 + i), tmp_path / f"{name}.safetensors")
    (tmp_path / "notes.txt").write_text("not an adapter")
    pipe.set_lora_library(tmp_path, capacity=2)
    st = lora.state(pipe.dit)
    assert pipe.available_loras() == ["one", "three", "two"]
    first = latents(pipe, loras={"one": 1.0})
    latents(pipe, loras={"two": 1.0})
    latents(pipe, loras={"one": 1.0})  # one is now the most recent
    assert st.loads == 2
    latents(pipe, loras={"three": 1.0})  # evicts two, the least recently used
    assert st.loads == 3 and sorted(st.modules) == ["one", "three"]
    assert torch.equal(latents(pipe, loras={"one": 1.0}), first)  # kept: no reload
    assert st.loads == 3
    latents(pipe, loras={"two": 1.0})
    assert st.loads == 4 and sorted(st.modules) == ["one", "two"]
    with pytest.raises(RequestError, match="more adapters than the 2 kept loaded"):
        latents(pipe, loras={"one": 1.0, "two": 1.0, "three": 1.0})
