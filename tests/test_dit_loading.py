"""Loading/saving DiT folders (diffusers layout, sharded, original Tencent keys), config and backends."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from omnidit.dit import DiT, DiTConfig, preset
from omnidit.dit import checkpoint as ckpt
from omnidit.dit.attention import ENV_VAR, get_backend
from omnidit.dit.convert import diffusers_to_original, is_original_state_dict, original_to_diffusers
from test_dit_parity import make_inputs, make_pair, tiny


@pytest.fixture(scope="module")
def pair():
    cfg = tiny()
    ref, ours = make_pair(cfg, seed=1)
    return cfg, ref, ours


@pytest.fixture(scope="module")
def inputs(pair):
    return make_inputs(pair[0], 2, (2, 4, 6), [3, 6], 6)


def _out(model, inputs):
    with torch.no_grad():
        return model(**inputs)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_load_diffusers_save(tmp_path, pair, inputs):
    cfg, ref, ours = pair
    ref.save_pretrained(tmp_path)
    model = DiT.from_pretrained(tmp_path)
    assert model.config == cfg
    _assert_same_weights(model.state_dict(), ref.state_dict())
    assert torch.equal(_out(model, inputs), _out(ours, inputs))


def test_load_sharded_diffusers_save(tmp_path, pair, inputs):
    cfg, ref, ours = pair
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / ckpt.INDEX_NAME).is_file()
    model = DiT.from_pretrained(tmp_path)
    _assert_same_weights(model.state_dict(), ref.state_dict())


def test_bf16_load_reads_each_tensor_into_bf16_on_a_meta_model(tmp_path, pair, monkeypatch):
    cfg, ref, _ = pair
    ref.save_pretrained(tmp_path)  # float32 on disk
    built_on, seen = [], []
    init = DiT.initialize_weights
    def spy_init(self):
        built_on.append(self.proj_out.weight.device)
        init(self)

    monkeypatch.setattr(DiT, "initialize_weights", spy_init)
    real_load = ckpt.load_state_dict

    def spy_load(*args, **kwargs):
        state = real_load(*args, **kwargs)
        seen.extend(t.dtype for t in state.values())
        return state

    monkeypatch.setattr(ckpt, "load_state_dict", spy_load)
    model = DiT.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert built_on == [torch.device("meta")]  # no float32 model materialised
    assert set(seen) == {torch.bfloat16}  # tensors were cast as read, before reaching the model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    want = ref.state_dict()["proj_out.weight"].to(torch.bfloat16)
    assert torch.equal(model.proj_out.weight, want)


@pytest.mark.parametrize("shard", [None, "16KB"])
def test_our_save_loads_in_diffusers(tmp_path, pair, shard):
    from diffusers import HunyuanVideoTransformer3DModel

    cfg, ref, ours = pair
    ours.save_pretrained(tmp_path, max_shard_size=shard)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_class_name"] == "HunyuanVideoTransformer3DModel" and "_diffusers_version" in saved
    assert "attention_backend" not in saved  # runtime choice, not part of the model
    back = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path)
    _assert_same_weights(back.state_dict(), ref.state_dict())
    assert DiT.from_pretrained(tmp_path).config == cfg


def test_original_keys_round_trip(pair):
    cfg, ref, _ = pair
    sd = ref.state_dict()
    orig = diffusers_to_original(sd, cfg)
    assert is_original_state_dict(orig) and not is_original_state_dict(sd)
    D = cfg.inner_dim
    # Spot checks of the original layout (hyvideo): fused qkv, fused linear1 = q|k|v|mlp, (shift, scale) final adaLN.
    def same(original_key, rows, diffusers_key):
        return torch.equal(orig[original_key][rows], sd[diffusers_key])

    assert same("double_blocks.0.img_attn_qkv.weight", slice(D, 2 * D), "transformer_blocks.0.attn.to_k.weight")
    assert same("double_blocks.1.txt_attn_qkv.bias", slice(2 * D, None), "transformer_blocks.1.attn.add_v_proj.bias")
    assert same("single_blocks.1.linear1.weight", slice(3 * D, None), "single_transformer_blocks.1.proj_mlp.weight")
    assert torch.equal(orig["final_layer.adaLN_modulation.1.weight"][:D], sd["norm_out.linear.weight"][D:])
    assert torch.equal(orig["final_layer.adaLN_modulation.1.bias"][D:], sd["norm_out.linear.bias"][:D])
    assert torch.equal(orig["txt_in.individual_token_refiner.blocks.1.mlp.fc2.weight"],
                       sd["context_embedder.token_refiner.refiner_blocks.1.ff.net.2.weight"])  # fmt: skip
    _assert_same_weights(original_to_diffusers(dict(orig), cfg), sd)


def test_original_conversion_agrees_with_diffusers_converter(pair):
    # diffusers' own single-file converter hard-codes the 13B width for single blocks, so compare
    # everything else on a config without single blocks.
    from diffusers.loaders.single_file_utils import convert_hunyuan_video_transformer_to_diffusers

    cfg = tiny(num_single_layers=0)
    ref, _ = make_pair(cfg, seed=2)
    orig = diffusers_to_original(ref.state_dict(), cfg)
    theirs = convert_hunyuan_video_transformer_to_diffusers({k: v.clone() for k, v in orig.items()})
    _assert_same_weights(original_to_diffusers(dict(orig), cfg), theirs)


def test_load_original_key_file(tmp_path, pair, inputs):
    cfg, ref, ours = pair
    orig = {k: v.contiguous() for k, v in diffusers_to_original(ref.state_dict(), cfg).items()}
    save_file(orig, str(tmp_path / "hunyuan_video_t2v.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    model = DiT.from_pretrained(tmp_path)
    assert torch.equal(_out(model, inputs), _out(ours, inputs))


def test_bad_folders_give_clear_errors(tmp_path, pair):
    cfg, ref, _ = pair
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DiT.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights"):
        DiT.from_pretrained(tmp_path)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    sd.pop("proj_out.bias")
    sd["extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / ckpt.WEIGHTS_NAME))
    expected = r"missing 1 key\(s\) \['proj_out.bias'\].*unexpected 1 key\(s\) \['extra.weight'\]"
    with pytest.raises(ValueError, match=expected):
        DiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(cfg.replace(num_attention_heads=4).to_dict()))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / ckpt.WEIGHTS_NAME))
    with pytest.raises(ValueError, match="wrong shapes"):
        DiT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg.to_dict(), image_condition_type="token_replace")))
    with pytest.raises(ValueError, match="image_condition_type"):
        DiT.from_pretrained(tmp_path)


def test_config_dict_round_trip_and_validation():
    cfg = preset("hunyuan-video")
    d = cfg.to_dict()
    assert d["rope_axes_dim"] == [16, 56, 56] and d["_class_name"] == "HunyuanVideoTransformer3DModel"
    assert DiTConfig.from_dict(d) == cfg
    assert sum(p.numel() for p in _meta_model(cfg).parameters()) == 12_821_012_544  # HunyuanVideo's 12.8B
    assert 8e6 <= sum(p.numel() for p in _meta_model(preset("shapes")).parameters()) <= 25e6  # embedded CPU model
    with pytest.raises(ValueError, match="unknown DiTConfig field"):
        DiTConfig.from_dict(dict(d, not_a_field=1))
    with pytest.raises(ValueError, match="rope_axes_dim"):
        tiny(rope_axes_dim=(2, 2, 2))
    with pytest.raises(ValueError, match="allowed"):
        preset("huge")


def _meta_model(cfg):
    with torch.device("meta"):
        return DiT(cfg)


def test_backend_registry(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_backend().name == "sdpa"
    with pytest.raises(ValueError, match=r"allowed: \['flash_attn', 'sdpa', 'xformers'\]"):
        get_backend("flashy")
    with pytest.raises(ValueError, match="attention_backend"):
        DiTConfig(attention_backend="nope")
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        DiT(preset("tiny"))
    assert DiT(preset("tiny"), attention_backend="sdpa").attention_backend.name == "sdpa"  # explicit wins
    if not torch.cuda.is_available():
        for name in ("flash_attn", "xformers"):
            with pytest.raises(ValueError, match="not available"):
                get_backend(name)
