"""The planner's memory model (omnidit/parallel/memory.py) and `omnidit plan`: choices for fixed inputs,
and its estimates against what small CPU configs really hold."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import run

from omnidit.dit import DiT, preset
from omnidit.dit.fp8 import model_bytes, quantize_model
from omnidit.dit.offload import blocks_of, offload_blocks
from omnidit.parallel.memory import ModelMemory, choose, dit_bytes, workload_of
from omnidit.parallel.planner import Hardware

HV = dict(frames=129, height=720, width=1280)


@pytest.fixture(scope="module")
def hv():
    return ModelMemory.hunyuan_video(), workload_of(preset("hunyuan-video"), **HV)


@pytest.mark.parametrize("gpus, memory, want", [
    (1, 80, ((1, 1, 1), "bf16", "none", True)),  # fits one 80 GB GPU in bf16 once the VAE decode is tiled
    (8, 80, ((8, 1, 1), "bf16", "none", True)),
    (64, 80, ((8, 8, 1), "bf16", "none", True)),  # Ulysses inside the node, the ring across nodes
    (1, 24, ((1, 1, 1), "bf16", "blocks", True)),  # a 24 GB GPU: the blocks streamed from the host
    (1, 19.5, ((1, 1, 1), "fp8", "blocks", True)),  # tighter still: FP8 on top of the offload
])
def test_choices_for_hunyuan_video_720p(hv, gpus, memory, want):
    m, w = hv
    p = choose(m, w, gpus, hw=Hardware(memory_gb=memory), **HV)
    c = p.row.config
    assert ((c.ulysses_degree, c.ring_degree, c.cfg_degree), p.weights, p.offload, p.vae_tiling) == want
    assert p.fits and p.memory_gb <= memory


def test_untiled_decode_never_fits_and_nothing_fits_reports_the_smallest(hv):
    m, w = hv
    p = choose(m, w, 1, hw=Hardware(memory_gb=8), **HV)
    assert not p.fits and (p.weights, p.offload, p.vae_tiling) == ("fp8", "blocks", True)


def _tiny():
    return preset("tiny").replace(num_layers=3, num_single_layers=5)


@pytest.mark.parametrize("weights, offload", [("bf16", "none"), ("fp8", "none"), ("bf16", "blocks")])
def test_dit_bytes_against_a_loaded_model(weights, offload):
    """The weights term against the bytes a real (tiny) DiT holds on its device: exact to 1% without
    offload; under offload an upper bound of the largest two consecutive groups, within 30%."""
    cfg = _tiny()
    m = ModelMemory.from_dit(DiT, cfg, text_encoder_bytes=0, vae_params=0, vae_channels=8)
    dit = DiT(cfg).to(torch.bfloat16)
    if weights == "fp8":
        quantize_model(dit)
    measured = model_bytes(dit)
    est = dit_bytes(m, weights, offload)
    if offload == "none":
        assert abs(est - measured) / measured < 0.01, (est, measured)
        return
    state = offload_blocks(dit, "cpu", group_size=2)
    groups = [sum(model_bytes(b) for b in g.blocks) for g in state.groups]
    resident = max(groups[g] + groups[(g + 1) % len(groups)] for g in range(len(groups)))
    measured = measured - sum(model_bytes(b) for b in blocks_of(dit)) + resident
    assert measured <= est <= 1.3 * measured, (est, measured)


def test_plan_cli(tmp_path):
    r = run("plan", "--model", "hunyuan-video", "--size", "1280x720", "--frames", "129", "--gpus", "8",
            "--gpu-memory", "80", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert (out["ulysses"], out["ring"], out["weights"], out["vae_tiling"]) == (8, 1, "bf16", True)
    assert out["fits"] and out["step_s"] > 0
    r = run("plan", "--model", "hunyuan-video", "--size", "720p")
    assert r.returncode == 2 and "--size" in r.stderr and "Traceback" not in r.stderr
