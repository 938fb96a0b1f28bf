"""LoRA files in each published layout: our DiT with the adapter vs diffusers' HunyuanVideoTransformer3DModel
with the same file loaded through diffusers' own HunyuanVideo LoRA loader (tiny random, fp32)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_dit_parity import make_inputs, make_pair, tiny
from tolerances import FP32_REL, rel_err

from omnidit.dit import DiT
from omnidit.dit.convert import diffusers_to_original, original_to_diffusers
from omnidit.dit.lora import save_lora

pytest.importorskip("peft")  # diffusers' load_lora_adapter runs on PEFT

# Modules of every block kind, in our (= diffusers') names.
OURS = [
    "transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.to_v", "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.attn.to_out.0", "transformer_blocks.1.attn.to_add_out", "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.1.ff_context.net.2", "transformer_blocks.0.norm1.linear",
    "single_transformer_blocks.0.attn.to_k", "single_transformer_blocks.1.proj_mlp",
    "single_transformer_blocks.0.proj_out", "single_transformer_blocks.1.norm.linear",
    "context_embedder.token_refiner.refiner_blocks.0.attn.to_q", "context_embedder.proj_in", "proj_out",
]  # fmt: skip
# Original Tencent modules diffusers' HunyuanVideo converter handles at any width (its single-block
# linear1 split assumes the 13B width, so linear1 is checked against convert.py below instead).
ORIGINAL = [
    "double_blocks.0.img_attn_qkv", "double_blocks.1.txt_attn_qkv", "double_blocks.0.img_attn_proj",
    "double_blocks.1.txt_attn_proj", "double_blocks.0.img_mlp.fc1", "double_blocks.1.txt_mlp.fc2",
    "double_blocks.0.img_mod.linear", "double_blocks.1.txt_mod.linear", "single_blocks.0.linear2",
    "single_blocks.1.modulation.linear",
]  # fmt: skip


def shapes(model: torch.nn.Module, config, name: str) -> tuple[int, int]:
    """(out, in) of a module given by our name or its original (possibly fused) name."""
    if name.startswith(("double_blocks.", "single_blocks.", "txt_in.", "final_layer.")):
        sd = diffusers_to_original(model.state_dict(), config)
        return tuple(sd[f"{name}.weight"].shape)
    return tuple(model.get_submodule(name).weight.shape)


def random_lora(model, config, names, ranks=(4, 2), seed=0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, name in enumerate(names):
        o, n = shapes(model, config, name)
        r = ranks[i % len(ranks)]
        out[name] = (0.3 * torch.randn(r, n, generator=g), 0.3 * torch.randn(o, r, generator=g))
    return out


def diffusers_load(ref, path):
    from diffusers import HunyuanVideoPipeline

    sd, metadata = HunyuanVideoPipeline.lora_state_dict(str(path), return_lora_metadata=True)
    HunyuanVideoPipeline.load_lora_into_transformer(sd, transformer=ref, metadata=metadata)


def compare(ref, ours, cfg, base=None):
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 6], 6)
    with torch.no_grad():
        want = ref(**inputs, return_dict=False)[0]
        got = ours(**inputs)
    if base is not None:
        assert rel_err(got, base(**inputs)) > 1e-2  # the adapter really changes the output
    assert rel_err(got, want) <= FP32_REL


def test_peft_keys_without_metadata(tmp_path):
    cfg = tiny()
    ref, ours = make_pair(cfg)
    lora = random_lora(ours, cfg, OURS)  # ranks 4 and 2 mixed: alpha = rank per module
    tensors = {}
    for m, (a, b) in lora.items():
        tensors[f"transformer.{m}.lora_A.weight"], tensors[f"transformer.{m}.lora_B.weight"] = a, b
    save_file(tensors, tmp_path / "peft.safetensors")
    base = DiT(cfg).eval()
    base.load_state_dict(ours.state_dict())
    assert ours.load_lora(tmp_path / "peft.safetensors") == "peft"
    diffusers_load(ref, tmp_path / "peft.safetensors")
    with torch.no_grad():
        compare(ref, ours, cfg, base)


def test_peft_metadata_alpha_and_our_saved_file(tmp_path):
    # A file with PEFT metadata (lora_alpha, alpha_pattern, rank_pattern), written by save_lora.
    cfg = tiny()
    ref, ours = make_pair(cfg)
    tensors = {}
    for i, (m, (a, b)) in enumerate(random_lora(ours, cfg, OURS[:8], seed=1).items()):
        tensors[f"lora_unet_{m.replace('.', '_')}.lora_down.weight"] = a
        tensors[f"lora_unet_{m.replace('.', '_')}.lora_up.weight"] = b
        tensors[f"lora_unet_{m.replace('.', '_')}.alpha"] = torch.tensor(float(1 + i % 3))
    ours.load_lora(tensors, name="k")
    save_lora(ours, "k", tmp_path / "saved.safetensors")
    with safe_open(str(tmp_path / "saved.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert meta["transformer.alpha_pattern"] and meta["transformer.rank_pattern"]  # the case that needs the patterns
    diffusers_load(ref, tmp_path / "saved.safetensors")
    compare(ref, ours, cfg)
    again = DiT(cfg).eval()
    again.load_state_dict(ours.state_dict())
    again.load_lora(tmp_path / "saved.safetensors")
    inputs = make_inputs(cfg, 1, (1, 4, 4), [3], 3)
    with torch.no_grad():
        assert torch.equal(again(**inputs), ours(**inputs))


@pytest.mark.parametrize("prefix", ["diffusion_model.", "transformer.", ""])
def test_original_tencent_names(tmp_path, prefix):
    cfg = tiny()
    ref, ours = make_pair(cfg)
    tensors = {}
    for m, (a, b) in random_lora(ours, cfg, ORIGINAL, seed=2).items():
        tensors[f"{prefix}{m}.lora_A.weight"], tensors[f"{prefix}{m}.lora_B.weight"] = a, b
    save_file(tensors, tmp_path / "orig.safetensors")
    ours.load_lora(tmp_path / "orig.safetensors")
    diffusers_load(ref, tmp_path / "orig.safetensors")
    compare(ref, ours, cfg)


def test_kohya_musubi(tmp_path):
    # diffusers' HunyuanVideo loader has no kohya converter: the reference file is the same adapter
    # renamed in the test to original names with alpha / rank folded into lora_B (kohya's scale).
    cfg = tiny()
    ref, ours = make_pair(cfg)
    kohya, folded = {}, {}
    for i, (m, (a, b)) in enumerate(random_lora(ours, cfg, ORIGINAL, seed=3).items()):
        key, alpha = "lora_unet_" + m.replace(".", "_"), float(i + 1)
        kohya[f"{key}.lora_down.weight"], kohya[f"{key}.lora_up.weight"] = a, b
        kohya[f"{key}.alpha"] = torch.tensor(alpha)
        folded[f"diffusion_model.{m}.lora_A.weight"] = a
        folded[f"diffusion_model.{m}.lora_B.weight"] = b * (alpha / a.shape[0])
    save_file(kohya, tmp_path / "musubi.safetensors")
    save_file(folded, tmp_path / "folded.safetensors")
    assert ours.load_lora(tmp_path / "musubi.safetensors", scale=1.0) == "musubi"
    diffusers_load(ref, tmp_path / "folded.safetensors")
    compare(ref, ours, cfg)


def test_fused_original_layers_equal_the_converted_fused_delta():
    # single_blocks.N.linear1 (q|k|v|mlp), the refiner's qkv and the final adaLN (halves swapped):
    # an adapter on the original fused layer equals adding B @ A to the original checkpoint's weight.
    cfg = tiny()
    _, ours = make_pair(cfg)
    names = ["single_blocks.0.linear1", "single_blocks.1.linear1", "txt_in.individual_token_refiner.blocks.0.self_attn_qkv",
             "final_layer.adaLN_modulation.1", "double_blocks.0.img_attn_qkv"]
    lora = random_lora(ours, cfg, names, seed=4)
    original = diffusers_to_original(ours.state_dict(), cfg)
    kohya = {}
    for m, (a, b) in lora.items():
        original[f"{m}.weight"] = original[f"{m}.weight"] + 0.5 * (b @ a)  # alpha / rank = 0.5
        key = "lora_unet_" + m.replace(".", "_")
        kohya.update({f"{key}.lora_down.weight": a, f"{key}.lora_up.weight": b,
                      f"{key}.alpha": torch.tensor(0.5 * a.shape[0])})
    merged = DiT(cfg).eval()
    merged.load_state_dict(original_to_diffusers(original, cfg))
    ours.load_lora(kohya)
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 6], 6)
    with torch.no_grad():
        assert rel_err(ours(**inputs), merged(**inputs)) <= FP32_REL


def test_unknown_or_incomplete_keys_fail_loudly():
    cfg = tiny()
    _, ours = make_pair(cfg)
    a, b = torch.randn(2, cfg.inner_dim), torch.randn(cfg.inner_dim, 2)
    good = {"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": a,
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": b}
    bad = {**good, "transformer.transformer_blocks.0.attn.nope.lora_A.weight": a,
           "transformer.transformer_blocks.0.attn.nope.lora_B.weight": b, "text_encoder.x.lora_A.weight": a}
    with pytest.raises(ValueError, match=r"3 of 5 LoRA key\(s\) match no Linear.*attn\.nope"):
        ours.load_lora(bad)
    with pytest.raises(ValueError, match="incomplete"):
        ours.load_lora({k: v for k, v in good.items() if "lora_A" in k})
    with pytest.raises(ValueError, match="do not fit"):
        ours.load_lora({k: v[:, :5] if "lora_A" in k else v for k, v in good.items()})
    with pytest.raises(ValueError, match="DoRA"):
        ours.load_lora({**good, "transformer.transformer_blocks.0.attn.to_q.lora_magnitude_vector": b[:, 0]})
    assert not any("LoRA" in type(m).__name__ for m in ours.modules())  # nothing was half-loaded


def test_hunyuanvideo15_adapter_on_every_linear_matches_diffusers(tmp_path):
    """A diffusers/PEFT LoRA for HunyuanVideo-1.5 (its module names are ours): every Linear, embedders
    included, against diffusers' HunyuanVideo15Transformer3DModel.load_lora_adapter on the same file."""
    from test_dit_hv15 import make_inputs as hv15_inputs
    from test_dit_hv15 import pair as hv15_pair

    ref, ours = hv15_pair("i2v")
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, m in ours.named_modules():
        if isinstance(m, torch.nn.Linear):
            tensors[f"transformer.{name}.lora_A.weight"] = 0.3 * torch.randn(3, m.in_features, generator=g)
            tensors[f"transformer.{name}.lora_B.weight"] = 0.3 * torch.randn(m.out_features, 3, generator=g)
    save_file(tensors, tmp_path / "hv15.safetensors")
    inputs = hv15_inputs(ours.config, (3, 3, 5), [5, 2], 6, [1, 4], 4, image=True)
    with torch.no_grad():
        base = ours(**inputs)
        ours.load_lora(tmp_path / "hv15.safetensors", scale=0.7)
        ref.load_lora_adapter(str(tmp_path / "hv15.safetensors"), prefix="transformer", adapter_name="a")
        ref.set_adapters(["a"], weights=[0.7])
        got, want = ours(**inputs), ref(**inputs, return_dict=False)[0]
    assert rel_err(got, base) > 1e-2
    assert rel_err(got, want) <= FP32_REL
