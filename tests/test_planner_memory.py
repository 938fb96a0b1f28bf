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
    (1, 80, ((1, 1, 1), "bf16", "none", False)),  # one 80 GB GPU: bf16, the decode in 17-frame windows only
    (8, 80, ((8, 1, 1), "bf16", "none", False)),
    (64, 80, ((8, 8, 1), "bf16", "none", False)),  # Ulysses inside the node, the ring across nodes
    (1, 40, ((1, 1, 1), "bf16", "none", True)),  # a 40 GB GPU: the decode tiled in space as well
    (1, 24, ((1, 1, 1), "bf16", "blocks", True)),  # a 24 GB GPU: the blocks streamed from the host
    (1, 15, ((1, 1, 1), "fp8", "blocks", True)),  # tighter still: FP8 on top of the offload
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
    assert (out["ulysses"], out["ring"], out["weights"], out["vae_tiling"]) == (8, 1, "bf16", False)
    assert out["fits"] and out["step_s"] > 0
    r = run("plan", "--model", "hunyuan-video", "--size", "720p")
    assert r.returncode == 2 and "--size" in r.stderr and "Traceback" not in r.stderr


# --- activations and VAE decode against measured peaks (benchmarks/planner_memory.py) ---------------------

def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "planner_memory.py"
    spec = importlib.util.spec_from_file_location("planner_memory_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# The stated error of the activation and VAE terms (BENCHMARKS.md, "Planner: measured vs estimated"): the
# estimate within 25% of the peak a fresh process measures, each case run in its own subprocess.
ERROR = 0.25


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [
    (8, 32, 32, 1, "float32"),  # 2,048 video + 64 text tokens
    (16, 32, 32, 1, "bfloat16"),  # twice the tokens, half the bytes per element (rope upcasts to fp32)
    (8, 32, 32, 2, "bfloat16"),  # a CFG batch of two
])
def test_activations_against_a_measured_dit_forward(case):
    bench = _bench()
    est = bench.estimate_dit(*case)
    got = bench.run_case({"kind": "dit", "args": list(case)}, timeout=110)["peak_mib"]
    assert abs(est / got - 1) <= ERROR, (case, est, got)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", [
    (5, 256, 256, False),  # one piece: the whole video at once
    (5, 256, 384, True),  # two 256x256 tiles blended: one tile live, the pieces and the video held
    (33, 256, 384, True),  # three windows of two tiles: one window's tiles held at a time, not the video's
])
def test_vae_decode_against_a_measured_decode(case):
    bench = _bench()
    est = bench.estimate_vae(*case)
    got = bench.run_case({"kind": "vae", "args": list(case)}, timeout=110)["peak_mib"]
    assert abs(est / got - 1) <= ERROR, (case, est, got)


def test_vae_decode_terms_follow_the_decode_path():
    """Windows bound the untiled decode in time (diffusers' default framewise decode), tiles in space."""
    m = ModelMemory(block_params=0, fp8_params=0, fp8_rows=0, other_params=0, blocks=0, largest_block=0,
                    text_encoder_bytes=0, vae_params=0, vae_channels=128)
    from omnidit.parallel.memory import vae_decode_bytes

    untiled = [vae_decode_bytes(m, f, 720, 1280, False) for f in (17, 129)]
    tiled = [vae_decode_bytes(m, f, 720, 1280, True) for f in (17, 129)]
    frame = 3 * 720 * 1280 * 2  # one output frame's bytes
    assert untiled[1] - untiled[0] < 3 * (129 - 17) * frame  # past one window only the video and its pieces grow
    assert tiled[0] < untiled[0] / 5 and tiled[1] < untiled[1] / 5  # one 256x256 tile live, not a 720p frame
