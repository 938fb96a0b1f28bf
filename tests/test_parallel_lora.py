"""LoRA under sequence and CFG parallelism (gloo, 2 processes): every rank applies the same adapters,
so the split forward equals one process with the same adapters (rel <= 1e-5), adapter switches
between forwards included (unmerged a, b, both, none; merged a); and the service's parallel replica
(a WorkerGroup) loads a request's adapters from its folder on every rank."""

from __future__ import annotations

import functools
import os

import pytest
import torch
import torch.multiprocessing as mp
from test_parallel_dit import GRIDS, free_port, inputs, tiny_dit
from tolerances import FP32_REL, rel_err

CASES = [(2, 1, 1), (1, 2, 1), (1, 1, 2)]  # (ulysses, ring, cfg)
SETS = [({"a": 1.0}, False), ({"b": 0.7}, False), ({"a": 0.5, "b": -1.0}, False), ({}, False), ({"a": 1.0}, True)]


def adapter(dit, seed: int) -> dict[str, torch.Tensor]:
    from omnidit.dit import lora

    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in lora.linear_names(dit):
        if name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            m = dit.get_submodule(name)
            out[f"transformer.{name}.lora_A.weight"] = 0.2 * torch.randn(2, m.in_features, generator=g)
            out[f"transformer.{name}.lora_B.weight"] = 0.2 * torch.randn(m.out_features, 2, generator=g)
    return out


def worker(rank: int, ports: list[int], out_dir: str) -> None:
    from omnidit.parallel import ParallelConfig, ParallelRuntime, init_parallel

    torch.set_num_threads(1)
    dit = tiny_dit()
    base = None
    with torch.no_grad():
        base = dit(*inputs(GRIDS[0]))
    dit.load_lora(adapter(dit, 1), name="a")
    dit.load_lora(adapter(dit, 2), name="b")
    refs = []
    with torch.no_grad():
        for scales, merge in SETS:
            dit.set_loras(scales, merge=merge)
            refs.append(dit(*inputs(GRIDS[0])))
    assert rel_err(refs[0], base) > 1e-2 and rel_err(refs[1], refs[0]) > 1e-2  # the adapters matter
    lines = []
    for (u, r, c), port in zip(CASES, ports):
        config = ParallelConfig(ulysses_degree=u, ring_degree=r, cfg_degree=c)
        state = init_parallel(config, rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}", timeout_s=60)
        runtime = ParallelRuntime(state)
        try:
            runtime.attach(dit)
            forward = functools.partial(runtime.forward, dit)
            with torch.no_grad():
                for (scales, merge), want in zip(SETS, refs):
                    dit.set_loras(scales, merge=merge)
                    err = rel_err(forward(*inputs(GRIDS[0])), want)
                    lines.append(f"{u} {r} {c} {scales} merged={merge} {err:.3e}")
                    assert err <= FP32_REL, lines[-1]
        finally:
            dit.set_joint_attention(None)
            runtime.close()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write("\n".join(lines))


@pytest.mark.timeout(120)
def test_parallel_forward_with_adapters_equals_single_process(tmp_path):
    ports = [free_port() for _ in CASES]
    mp.spawn(worker, args=(ports, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert len((tmp_path / f"rank{rank}.txt").read_text().splitlines()) == len(CASES) * len(SETS)


@pytest.mark.timeout(180)
def test_worker_group_loads_the_same_adapters_on_every_rank(tmp_path):
    # The service's parallel replica: 2 Ulysses workers, adapters from a folder named per request.
    import numpy as np
    from safetensors.torch import save_file
    from tiny_models import make_tiny_model_dir

    from omnidit import Pipeline
    from omnidit.parallel import ParallelConfig
    from omnidit.request import RequestError
    from omnidit.serving.worker_group import WorkerGroup

    model = make_tiny_model_dir(tmp_path / "m", sampling={"steps": 2})
    ref = Pipeline.from_pretrained(model, device="cpu")
    (tmp_path / "loras").mkdir()
    for i, name in enumerate(["a", "b"]):
        save_file(adapter(ref.dit, 10 + i), tmp_path / "loras" / f"{name}.safetensors")
    ref.set_lora_library(tmp_path / "loras")
    with WorkerGroup(str(model), ParallelConfig(ulysses_degree=2), device="cpu", collective_timeout_s=60) as group:
        group.set_lora_library(str(tmp_path / "loras"))
        wants = []
        for loras in ({"b": 0.5, "a": 1.0}, {}):
            got = group.generate("a red circle", seed=3, loras=loras).frames.astype(int)
            wants.append(ref.generate("a red circle", seed=3, loras=loras).frames.astype(int))
            assert np.abs(got - wants[-1]).max() <= 1, loras
        assert np.abs(wants[0] - wants[1]).max() > 8  # the adapters visibly change the frames
        with pytest.raises(RequestError, match="unknown adapter 'c'"):  # on every rank, before any collective
            group.generate("a red circle", seed=3, loras={"c": 1.0})
        assert group.generate("a red circle", seed=3, loras={}).frames.shape == got.shape  # the group still serves
