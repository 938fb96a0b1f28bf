"""Memory options (issue 25): layer offload equals no offload, Pipeline/CLI `weights` and `offload`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_cli import run
from test_dit_parity import make_inputs, randomize_, tiny
from tiny_models import make_tiny_model_dir

from omnidit.dit import DiT
from omnidit.dit.cache import build_cache
from omnidit.dit.fp8 import FP8, FP8Linear, quantize_model
from omnidit.dit.offload import blocks_of, offload_blocks, offload_state, remove_offload
from omnidit.generation import read_video


def _model(seed: int = 0) -> DiT:
    m = DiT(tiny(num_layers=3, num_single_layers=2)).eval()
    randomize_(m, seed)
    return m


@pytest.mark.parametrize("group_size", [1, 2, 5])
def test_offload_blocks_equals_no_offload(group_size):
    m = _model()
    inputs = make_inputs(m.config, 2, (2, 4, 6), [3, 6], 6)
    with torch.no_grad():
        want = m(**inputs)
        before = {k: v.clone() for k, v in m.state_dict().items()}
        state = offload_blocks(m, "cpu", group_size=group_size)
        got = m(**inputs)
        got2 = m(**inputs)  # the second step finds the first group prefetched
    groups = -(-5 // group_size)
    assert len(state.groups) == groups
    # Every group is copied once per forward, plus the next step's first group prefetched at the end.
    assert state.loads == (2 * groups + 1 if groups > 1 else 2), state.loads
    assert torch.equal(got, want) and torch.equal(got2, want)
    assert not any(g.resident for g in state.groups[1:])  # only the prefetched first group may be copied in
    remove_offload(m)
    assert offload_state(m) is None and all(not h for h in [m._forward_pre_hooks for m in blocks_of(m)])
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k  # the host weights are untouched
    with torch.no_grad():
        assert torch.equal(m(**inputs), want)


def test_offload_with_fp8_weights_and_step_cache():
    m = quantize_model(_model(1))
    inputs = make_inputs(m.config, 1, (1, 4, 4), [5], 5)
    with torch.no_grad():
        want = m(**inputs)
        offload_blocks(m, "cpu", group_size=2)
        assert all(t.dtype == FP8 for mod in m.modules() if isinstance(mod, FP8Linear) for t in [mod.weight])
        assert torch.equal(m(**inputs), want)
        # A step cache that skips the blocks on later steps: the skipped groups are simply not copied.
        cache = build_cache("fbcache", 10.0, {})
        cache.begin(steps=3, branches=1)
        outs = [m(**inputs, cache=cache) for _ in range(3)]
        assert cache.computed == [1, 0, 1]  # the middle step skipped the blocks after the first
    ref = _model(1)
    quantize_model(ref)
    cache = build_cache("fbcache", 10.0, {})
    cache.begin(steps=3, branches=1)
    with torch.no_grad():
        for out in outs:
            assert torch.equal(out, ref(**inputs, cache=cache))


def test_offload_rejects_bad_group_size():
    with pytest.raises(ValueError, match="group_size"):
        offload_blocks(_model(), "cpu", group_size=0)


@pytest.fixture(scope="module")
def bf16_model_dir(tmp_path_factory):
    """The tiny model with its transformer stored in bfloat16 (a real checkpoint's usual dtype)."""
    path = make_tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny", sampling={"steps": 2})
    DiT.from_pretrained(path / "transformer", dtype=torch.bfloat16).save_pretrained(path / "transformer")
    return path


def test_pipeline_weights_fp8_computes_in_the_activation_dtype(bf16_model_dir):
    from omnidit import Pipeline

    pipe = Pipeline.from_pretrained(bf16_model_dir, device="cpu", weights="fp8")
    lin = [m for m in pipe.dit.modules() if isinstance(m, FP8Linear)]
    assert lin and all(m.weight.dtype == FP8 for m in lin)
    others = {p.dtype for n, p in pipe.dit.named_parameters() if not n.endswith("weight_scale")}
    assert others == {torch.float32}, others  # not the bf16 the folder stores: fp32 on CPU
    assert pipe.dtype == torch.float32
    ref = Pipeline.from_pretrained(bf16_model_dir, device="cpu")
    a = pipe.generate("a red circle", seed=3).frames.astype(int)
    b = ref.generate("a red circle", seed=3).frames.astype(int)
    assert a.shape == b.shape and 0 < np.abs(a - b).mean() < 8  # quantised, yet close
    for bad in ({"weights": "int4"}, {"offload": "all"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Pipeline.from_pretrained(bf16_model_dir, device="cpu", **bad)


def test_pipeline_offload_blocks_equals_no_offload(bf16_model_dir):
    from omnidit import Pipeline

    ref = Pipeline.from_pretrained(bf16_model_dir, device="cpu")
    pipe = Pipeline.from_pretrained(bf16_model_dir, device="cpu", offload="blocks")
    assert pipe.offload == "blocks" and offload_state(pipe.dit) is not None
    a = pipe.generate("a blue square", seed=5).frames
    assert np.array_equal(a, ref.generate("a blue square", seed=5).frames)
    assert offload_state(pipe.dit).loads > 0


def test_cli_generate_weights_and_offload(bf16_model_dir, tmp_path):
    r = run("generate", "a red circle", "--model", str(bf16_model_dir), "--weights", "fp8", "--offload", "blocks",
            "--out", str(tmp_path / "a.png"))
    assert r.returncode == 0, r.stderr
    assert read_video(tmp_path / "a.png").shape == (1, 32, 32, 3)
    r = run("generate", "a red circle", "--model", str(bf16_model_dir), "--parallel", "auto", "--out",
            str(tmp_path / "c.png"))
    assert r.returncode == 0 and "parallel auto: CPU, 1 process" in r.stderr, r.stderr
    r = run("generate", "a red circle", "--model", str(bf16_model_dir), "--weights", "int8",
            "--out", str(tmp_path / "b.png"))
    assert r.returncode == 2 and "--weights" in r.stderr and "fp8" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "b.png").exists()


def test_serve_and_batch_settings_take_weights_and_offload():
    from omnidit.batch import BatchConfig
    from omnidit.serving.settings import ServeSettings

    assert ServeSettings(weights="fp8", offload="blocks").weights == "fp8"
    with pytest.raises(ValueError, match="weights must be one of"):
        ServeSettings(weights="fp4")
    with pytest.raises(ValueError, match="offload must be one of"):
        BatchConfig(prompts="p.jsonl", out="o", offload="disk")
    r = run("serve", "--weights", "fp16")
    assert r.returncode == 2 and "--weights" in r.stderr and "Traceback" not in r.stderr


def test_parallel_auto_applies_the_plan_to_the_gpus_found(bf16_model_dir, monkeypatch):
    """The GPU branch of --parallel auto, with two 80 GB GPUs under torchrun faked."""
    import argparse
    import types

    from omnidit.cli.auto_parallel import apply_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=80e9))
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = argparse.Namespace(parallel="auto", model=str(bf16_model_dir), frames=1, height=None, width=None,
                              weights=None, offload="none", ulysses_degree=1, ring_degree=1, cfg_parallel=False)
    line = apply_plan(args, None)
    assert line.startswith("parallel auto: 2 GPU(s) of 80 GB")
    assert args.ulysses_degree * args.ring_degree * (2 if args.cfg_parallel else 1) == 2
    assert (args.weights, args.offload) == ("bf16", "none")  # a tiny model fits: nothing traded away


def test_serve_parallel_auto_on_cpu_is_one_process(capsys):
    from test_parallel_dit import free_port

    from omnidit.cli import build_parser
    from omnidit.cli.serve import settings

    args = build_parser("serve").parse_args(["serve", "--parallel", "auto", "--device", "cpu", "--port",
                                             str(free_port())])
    s = settings(args)
    assert (s.ulysses_degree, s.ring_degree, s.cfg_parallel) == (1, 1, False)
    assert "parallel auto: CPU, 1 process" in capsys.readouterr().err
