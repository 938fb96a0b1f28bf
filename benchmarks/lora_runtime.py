"""LoRA at run time on the embedded `shapes` model: the cost of an adapter per DiT step (none vs
unmerged vs merged), and the time to switch adapters vs reloading the model.

    python benchmarks/lora_runtime.py --threads 1     # CPU; ~10 minutes on the shared 2-core VM
    python benchmarks/lora_runtime.py --rank 32 --repeats 20

Part 1: one DiT forward at the model's default size with CFG (batch 2), median wall and process-CPU
time over --repeats rounds (each: every mode in turn, one untimed forward after switching, then two timed): no adapter, one unmerged adapter, two unmerged adapters,
one merged adapter. The adapters have --rank on every Linear of the transformer blocks (attention,
MLP, modulation: the widest usual target set).

Part 2: switching. DiT level: set_loras between two loaded adapters (unmerged, and merged: unmerge +
merge); loading an adapter file (the library's cost on a cache miss); Pipeline.from_pretrained (a
reload). Service level (in-process GeneratorEngine, --lora-dir with two adapters, --steps): an image
request that switches adapter vs one repeating the previous adapter (interleaved), and the engine's
start (model load).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from omnidit import Pipeline
from omnidit.dit import lora


def block_linears(dit) -> list[str]:
    return [n for n in lora.linear_names(dit) if n.startswith(("transformer_blocks.", "single_transformer_blocks."))]


def random_adapter(dit, rank: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in block_linears(dit):
        m = dit.get_submodule(name)
        out[f"transformer.{name}.lora_A.weight"] = torch.randn(rank, m.in_features, generator=g) / m.in_features**0.5
        out[f"transformer.{name}.lora_B.weight"] = 0.01 * torch.randn(m.out_features, rank, generator=g)
    return out


def timed(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def step_cost(pipe: Pipeline, rank: int, repeats: int) -> list[tuple[str, float, float]]:
    dit = pipe.dit
    c = pipe.config
    shape = (2, *pipe.vae.latent_shape(1, c.height, c.width))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    text, mask, pooled = pipe.encode_text(["a red circle on a blue background", ""])[:3]
    t = torch.tensor([500.0, 500.0])
    modes = {"no adapter": ({}, False), "1 adapter, unmerged": ({"a": 1.0}, False),
             "2 adapters, unmerged": ({"a": 1.0, "b": 0.5}, False), "1 adapter, merged": ({"a": 1.0}, True)}
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    with torch.no_grad():
        for _ in range(repeats):
            for m, (scales, merge) in modes.items():
                dit.set_loras(scales, merge=merge)  # not timed: a mode change between runs
                dit(x, t, text, mask, pooled)  # one untimed forward after the change (allocator, caches)
                for _ in range(2):
                    w, p = timed(lambda: dit(x, t, text, mask, pooled))
                    wall[m].append(w)
                    cpu[m].append(p)
    dit.set_loras({})
    return [(m, median_ms(wall[m]), median_ms(cpu[m])) for m in modes]


def switch_cost(pipe: Pipeline, folder: Path, repeats: int) -> list[tuple[str, float]]:
    dit = pipe.dit
    rows = []
    for merge in (False, True):
        samples = []
        for i in range(repeats):
            samples.append(timed(lambda i=i: dit.set_loras({"a" if i % 2 else "b": 1.0}, merge=merge))[0])
        rows.append((f"switch a <-> b, {'merged (unmerge + merge)' if merge else 'unmerged'}", median_ms(samples)))
    dit.set_loras({})
    samples = []
    for _ in range(max(3, repeats // 4)):
        samples.append(timed(lambda: lora.load(dit, folder / "c.safetensors", name="c", activate=False))[0])
        dit.unload_lora("c")
    rows.append(("load an adapter file (library miss)", median_ms(samples)))
    samples = [timed(lambda: Pipeline.from_pretrained("shapes", device="cpu"))[0] for _ in range(3)]
    rows.append(("reload the model (Pipeline.from_pretrained)", median_ms(samples)))
    return rows


def service_cost(folder: Path, steps: int, repeats: int, data: Path) -> list[tuple[str, float]]:
    from omnidit.serving.engine import GeneratorEngine
    from omnidit.serving.settings import ServeSettings

    settings = ServeSettings(model="shapes", device="cpu", data_dir=str(data), run_jobs=False, lora_dir=str(folder))
    w0 = time.perf_counter()
    engine = GeneratorEngine(settings)
    start = time.perf_counter() - w0
    c = engine.pipe.config

    def request(name: str) -> None:
        p = {"prompt": "a red circle", "n": 1, "width": c.width, "height": c.height, "steps": steps,
             "guidance": c.guidance, "seed": 1, "lora": {name: 1.0}}
        (res,) = engine.run_images([p])
        assert "error" not in res, res

    for name in ("a", "b"):  # first use: loaded from the folder, not timed
        request(name)
    loads = lora.state(engine.pipe.dit).loads
    same, switched, previous = [], [], "b"
    for i in range(2 * repeats):  # a a b b a a ...: every other request switches, interleaved with the others
        name = "ab"[(i // 2) % 2]
        (switched if name != previous else same).append(timed(lambda name=name: request(name))[0])
        previous = name
    assert lora.state(engine.pipe.dit).loads == loads  # no reload while switching
    engine.close()
    return [(f"image request ({steps} steps), same adapter each time", median_ms(same)),
            (f"image request ({steps} steps), switching adapter", median_ms(switched)),
            ("engine start (the model loaded once)", 1000 * start)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the service requests")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained("shapes", device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "loras"
        folder.mkdir()
        for i, name in enumerate("abc"):
            save_file(random_adapter(pipe.dit, args.rank, i), folder / f"{name}.safetensors")
        for name in "ab":
            pipe.load_lora(folder / f"{name}.safetensors", name=name)
        n = len(block_linears(pipe.dit))
        print(f"shapes DiT, rank {args.rank} on {n} block Linears, torch threads {torch.get_num_threads()}",
              file=sys.stderr)
        steps = step_cost(pipe, args.rank, args.repeats)
        switches = switch_cost(pipe, folder, args.repeats)
        service = service_cost(folder, args.steps, max(4, args.repeats // 4), Path(tmp) / "data")
    base_wall, base_cpu = steps[0][1], steps[0][2]
    print("| mode | wall ms / forward | CPU ms / forward | wall vs none | CPU vs none |")
    print("|---|---|---|---|---|")
    for m, w, c in steps:
        print(f"| {m} | {w:.1f} | {c:.1f} | {w / base_wall:.3f}x | {c / base_cpu:.3f}x |")
    reload_ms = switches[-1][1]
    print("\n| operation | median ms | vs reloading the model |")
    print("|---|---|---|")
    for name, ms in switches + service:
        print(f"| {name} | {ms:.2f} | {ms / reload_ms:.4f}x |")


if __name__ == "__main__":
    main()
