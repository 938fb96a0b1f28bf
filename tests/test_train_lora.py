"""`omnidit train lora` on a tiny model: the adapter lowers the loss on new-word scenes, a resumed
run ends where an unbroken one does, and the file loads back with `DiT.load_lora` and changes the output."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import make_tiny_model_dir

from omnidit.cli import main
from omnidit.dit import DiT
from omnidit.sampling.flow import flow_loss
from omnidit.training.lora_train import LoRATrainConfig, scene_batch, train_lora
from omnidit.training.vae_train import to_video_tensor


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m")


def _config(model, out, steps: int, every: int = 5) -> LoRATrainConfig:
    return LoRATrainConfig(out=str(out), model=str(model), rank=4, image_batch=4, size=32, lr=2e-2, warmup=1,
                           max_steps=steps, max_minutes=None, checkpoint_every=every, p_word=0.5)


def _held_out_loss(pipe, dit: DiT, cfg: LoRATrainConfig) -> float:
    """Flow loss on a batch no training step draws (step 10**6), same noise every call."""
    prompts, frames = scene_batch(cfg, 10**6, cfg.size)
    with torch.no_grad():
        x0 = pipe.vae.encode(to_video_tensor(frames)).float()
        e = pipe.text_encoder.encode(prompts)
        total = 0.0
        for k in range(4):
            gen = torch.Generator().manual_seed(k)
            total += float(flow_loss(dit, x0, e.hidden_states, e.attention_mask, e.pooled, None, gen, 0.0))
    return total / 4


def test_adapter_lowers_loss_loads_back_and_changes_the_output(model, tmp_path):
    cfg = _config(model, tmp_path / "run", 20)
    path = train_lora(cfg)
    assert path.name == "m-cross.safetensors" and path.stat().st_size < 1_000_000
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]

    from omnidit.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(str(model), device="cpu", dtype=torch.float32)
    dit = DiT.from_pretrained(model / "transformer", dtype=torch.float32).eval()
    before = _held_out_loss(pipe, dit, cfg)
    x = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    args = (x, torch.tensor([500.0]), torch.randn(1, 5, 384), torch.ones(1, 5, dtype=torch.long), torch.randn(1, 384))
    with torch.no_grad():
        y0 = dit(*args)
    name = dit.load_lora(path)
    after = _held_out_loss(pipe, dit, cfg)
    with torch.no_grad():
        y1 = dit(*args)
    assert after < 0.85 * before, (before, after)
    assert (y1 - y0).abs().max() > 1e-3
    dit.unload_lora(name)
    with torch.no_grad():
        assert torch.equal(dit(*args), y0)

    # omnidit eval --word --lora: the new word's prompts, sampled with the adapter loaded
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(model), "--word", "cross", "--lora", str(path), "--n", "2", "--videos", "0",
                 "--size", "32", "--steps", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"].endswith("+ m-cross:1") and result["images"]["n"] == 2 and "shape" in result["images"]["scores"]

    # eval --decoder keeps sampled latents: ones sampled with an adapter (or another scale) are never reused without
    cache, kept = tmp_path / "latents", []
    for extra in ([], ["--lora", str(path)], ["--lora", f"{path}:0.5"], []):
        assert main(["eval", "--model", str(model), "--word", "cross", *extra, "--n", "2", "--videos", "0",
                     "--size", "32", "--steps", "2", "--decoder", str(model / "vae"),
                     "--latent-cache", str(cache)]) == 0
        kept.append(sorted(cache.iterdir()))
    assert [len(k) for k in kept] == [1, 2, 3, 3]
    plain, adapted = (torch.load(f) for f in kept[0] + [f for f in kept[1] if f not in kept[0]])
    assert not torch.equal(plain, adapted)


def test_resumed_run_equals_an_unbroken_one(model, tmp_path):
    from safetensors.torch import load_file

    whole = train_lora(_config(model, tmp_path / "whole", 4, every=2))
    train_lora(_config(model, tmp_path / "split", 2, every=2))
    split = train_lora(_config(model, tmp_path / "split", 4, every=2))  # resumes from the step-2 checkpoint
    a, b = load_file(whole), load_file(split)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_rejects_bad_flags_in_one_line(model, tmp_path, capsys):
    assert main(["train", "lora", "--model", str(model), "--rank", "0", "--out", str(tmp_path)]) == 2
    assert main(["train", "lora", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert main(["train", "lora", "--model", str(model), "--p-word", "1.5", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "rank" in err[0] and "missing" in err[1] and "p_word" in err[2]
    assert not (tmp_path / "checkpoint.pt").exists()
