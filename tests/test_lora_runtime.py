"""The LoRA runtime (omnidit/dit/lora.py): unmerged vs merged, several adapters, exact unload,
trainable adapters, and composition with FP8 weights and step caching."""

from __future__ import annotations

import copy

import pytest
import torch
from test_dit_parity import make_inputs, make_pair, tiny
from tolerances import FP32_REL, rel_err

from omnidit.dit import lora
from omnidit.dit.fp8 import FP8Linear, quantize_model

TARGETS = ["attn.to_q", "attn.to_v", "attn.add_k_proj", "ff.net.0.proj", "proj_mlp", "norm.linear", "proj_out"]


def adapter(model, seed, rank=3, targets=TARGETS) -> dict[str, torch.Tensor]:
    """A random adapter (both factors non-zero) in diffusers keys."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in lora.linear_names(model):
        if any(name.endswith("." + t) or name == t for t in targets):
            m = model.get_submodule(name)
            out[f"transformer.{name}.lora_A.weight"] = 0.3 * torch.randn(rank, m.in_features, generator=g)
            out[f"transformer.{name}.lora_B.weight"] = 0.3 * torch.randn(m.out_features, rank, generator=g)
    return out


def expected_weights(model, adapters: dict[str, tuple[dict, float]]) -> dict[str, torch.Tensor]:
    """The base state dict with each adapter's scale * B @ A added by hand (in float64)."""
    sd = {k: v.clone().double() for k, v in model.state_dict().items()}
    for tensors, scale in adapters.values():
        for k, a in tensors.items():
            if k.endswith("lora_A.weight"):
                mod = k[len("transformer."): -len(".lora_A.weight")]
                sd[f"{mod}.weight"] += scale * (tensors[k.replace("lora_A", "lora_B")].double() @ a.double())
    return {k: v.float() for k, v in sd.items()}


@pytest.fixture()
def setup():
    cfg = tiny()
    _, model = make_pair(cfg)
    return cfg, model, make_inputs(cfg, 2, (2, 4, 6), [3, 6], 6)


@torch.no_grad()
def test_two_adapters_unmerged_and_merged_equal_the_hand_merged_weights(setup):
    _, model, x = setup
    base_sd = copy.deepcopy(model.state_dict())
    base = model(**x)
    a1, a2 = adapter(model, 1), adapter(model, 2, rank=2, targets=TARGETS[:3])
    model.load_lora(a1, name="one", scale=0.7)
    model.load_lora(a2, name="two", scale=-1.5)
    assert set(model.state_dict()) == set(base_sd)  # adapters never enter the state dict
    want_model = copy.deepcopy(model)
    for n in ("one", "two"):
        want_model.unload_lora(n)
    want_model.load_state_dict(expected_weights(want_model, {"one": (a1, 0.7), "two": (a2, -1.5)}))
    want = want_model(**x)
    unmerged = model(**x)
    assert rel_err(unmerged, base) > 1e-2
    assert rel_err(unmerged, want) <= FP32_REL
    model.set_loras({"one": 0.7, "two": -1.5}, merge=True)
    assert all(not layer.active for _, layer in lora.lora_layers(model))  # nothing added at run time
    assert rel_err(model(**x), want) <= FP32_REL
    model.set_loras({"one": 0.7})  # unmerge, then one adapter unmerged
    only_one = model(**x)
    assert rel_err(only_one, unmerged) > 1e-3
    model.set_loras({})
    assert torch.equal(model(**x), base)  # no adapter active: exactly the base model
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_sd[k]), k  # merge + unmerge restored every weight bit-for-bit


@torch.no_grad()
def test_unload_restores_modules_and_weights_bit_for_bit(setup):
    _, model, x = setup
    base_sd = copy.deepcopy(model.state_dict())
    modules = {n: m for n, m in model.named_modules()}
    base = model(**x)
    model.load_lora(adapter(model, 3), name="a")
    model.load_lora(adapter(model, 4), name="b")
    model.set_loras({"a": 1.0, "b": 0.5}, merge=True)
    model.unload_lora("a")  # b stays merged
    assert lora.state(model).merged and lora.state(model).active == {"b": 0.5}
    model.unload_lora("b")
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert {n: m for n, m in model.named_modules()}.keys() == modules.keys()
    assert all(model.get_submodule(n) is m for n, m in modules.items())  # the very same module objects
    for k, v in model.state_dict().items():
        assert torch.equal(v, base_sd[k]), k
    assert torch.equal(model(**x), base)
    with pytest.raises(ValueError, match=r"unknown LoRA 'b'; loaded: none"):
        model.unload_lora("b")


@torch.no_grad()
def test_scale_changes_in_place_and_bad_requests_fail(setup):
    _, model, x = setup
    model.load_lora(adapter(model, 5), name="s")
    buffers = {id(b) for _, layer in lora.lora_layers(model) for b in layer.buffers()}
    half = model(**x)
    model.set_loras({"s": 2.0})
    assert {id(b) for _, layer in lora.lora_layers(model) for b in layer.buffers()} == buffers  # same tensors
    assert rel_err(model(**x), half) > 1e-3
    with pytest.raises(ValueError, match=r"unknown LoRA 'x'; loaded: \['s'\]"):
        model.set_loras({"x": 1.0})
    with pytest.raises(ValueError, match="finite number"):
        model.set_loras({"s": float("nan")})
    with pytest.raises(ValueError, match="already loaded"):
        model.load_lora(adapter(model, 6), name="s")
    with lora.using_loras(model, {}):
        assert not any(layer.active for _, layer in lora.lora_layers(model))
    assert lora.state(model).active == {"s": 2.0}  # restored after the block


def test_trainable_adapter_trains_only_itself_and_round_trips(setup, tmp_path):
    _, model, x = setup
    with torch.no_grad():
        base = model(**x)
    for p in model.parameters():
        p.requires_grad_(False)
    params = lora.add_trainable_lora(model, "new", 4, ["attn.to_q", "attn.to_k", "proj_mlp"], alpha=8, seed=0)
    assert params and all(p.requires_grad for p in params)
    with torch.no_grad():
        assert torch.equal(model(**x), base)  # up starts at zero: the model is unchanged
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        model(**x).square().mean().backward()
        opt.step()
    assert all(p.grad is not None for p in params)
    assert all(p.grad is None for n, p in model.named_parameters() if ".adapters." not in n)
    with torch.no_grad():
        trained = model(**x)
    assert rel_err(trained, base) > 1e-4
    path = lora.save_lora(model, "new", tmp_path / "new.safetensors")
    fresh = copy.deepcopy(model)
    fresh.unload_lora("new")
    fresh.load_lora(path)
    with torch.no_grad():
        assert torch.equal(fresh(**x), trained)


@torch.no_grad()
def test_composes_with_fp8_weights(setup):
    # LoRA beside an FP8Linear == LoRA beside a full-precision Linear holding the dequantised weight.
    _, model, x = setup
    fp8 = quantize_model(copy.deepcopy(model))
    deq = copy.deepcopy(model)
    for name, m in fp8.named_modules():
        if isinstance(m, FP8Linear):
            deq.get_submodule(name).weight.copy_(m.dequantized(torch.float32))
    a = adapter(model, 7)
    base = fp8(**x)
    fp8.load_lora(a, name="a")
    deq.load_lora(a, name="a")
    got = fp8(**x)
    assert any(isinstance(layer.base, FP8Linear) for _, layer in lora.lora_layers(fp8))
    assert rel_err(got, base) > 1e-2
    assert rel_err(got, deq(**x)) <= FP32_REL
    with pytest.raises(ValueError, match="keep adapters unmerged"):
        fp8.set_loras({"a": 1.0}, merge=True)
    fp8.unload_lora("a")
    assert torch.equal(fp8(**x), base)


@torch.no_grad()
def test_composes_with_step_caching(setup):
    from omnidit.dit.cache import FirstBlockCache

    _, model, x = setup
    model.load_lora(adapter(model, 8), name="a")
    want = model(**x)
    cache = FirstBlockCache(0.0)  # threshold 0: every step computed, bit-exact
    cache.begin(steps=1, branches=1)
    assert torch.equal(model(**x, cache=cache), want)
    model.set_loras({})
    cache.begin(steps=1, branches=1)
    assert rel_err(model(**x, cache=cache), want) > 1e-2  # the cached path sees the adapter switch


def test_scale_changes_do_not_recompile(setup):
    # Scales are buffers updated in place: a compiled block keeps its graph when only a scale changes.
    from torch._dynamo.testing import CompileCounter

    _, model, _ = setup
    model.load_lora(adapter(model, 9), name="a")
    layer = model.get_submodule("transformer_blocks.0.attn.to_q")
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    x = torch.randn(2, 5, layer.in_features)
    with torch.no_grad():
        first = compiled(x)
        model.set_loras({"a": 3.0})
        third = compiled(x)
    assert counter.frame_count == 1  # no recompile for the new scale
    base = layer.base(x)
    assert torch.allclose(third - base, 3 * (first - base), atol=1e-5)  # ... and the new scale is used
    torch._dynamo.reset()
