"""Regional torch.compile (omnidit/dit/compile.py) against eager on one DiT, in the same run.

    python benchmarks/compile_blocks.py                       # the shapes DiT on CPU, inductor
    python benchmarks/compile_blocks.py --backend aot_eager   # tracing cost without generated kernels

Per input shape (an image batch and a video batch of the `shapes` world at 64x64, CFG rows
included): the eager forward's median, the compiled DiT's first forward (compile + run) and
its median once compiled, so the compile time is reported apart from the steady-state step.
A second batch size is run after the first to show the one recompile that marks the batch
dimension dynamic (what step-cache sub-batches cost once). Eager and compiled DiTs hold the
same weights; the relative difference of their outputs is printed beside the times.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time

import torch

from omnidit.dit import DiT
from omnidit.dit.compile import BACKENDS, compile_blocks
from omnidit.model_folder import open_model

# (label, batch rows, latent grid (T, H, W)): shapes at 64x64 is an 8x8 latent; 17 frames -> 5 latent frames
SHAPES = [("image x8 + CFG", 16, (1, 8, 8)), ("video x4 + CFG", 8, (5, 8, 8))]
TEXT_LEN = 32  # the shapes text encoder's max_length


def inputs(dit: DiT, rows: int, grid: tuple[int, int, int], seed: int = 0):
    c = dit.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, c.in_channels, *grid, generator=g)
    text = torch.randn(rows, TEXT_LEN, c.text_embed_dim, generator=g)
    mask = torch.ones(rows, TEXT_LEN, dtype=torch.long)
    mask[rows // 2:, 8:] = 0  # half the rows with padded text, as prompts of different lengths have
    pooled = torch.randn(rows, c.pooled_projection_dim, generator=g)
    t = torch.full((rows,), 500.0)
    return x, t, text, mask, pooled


def timed(fn) -> tuple[float, float, torch.Tensor]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w, time.process_time() - c, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--backend", default="inductor", choices=BACKENDS)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    eager = DiT.from_pretrained(open_model(args.model).transformer_dir).float().eval()  # fp32, as on CPU
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled, backend=args.backend)
    print(f"{args.model} DiT, {args.backend}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| input | eager s/step (CPU s) | compiled first call s (CPU s) | compile s (first - steady) "
          "| compiled s/step (CPU s) | speed-up wall (CPU) | rel. diff |")
    print("|---|---|---|---|---|---|---|")
    with torch.no_grad():
        for label, rows, grid in [*SHAPES, (SHAPES[0][0].replace("x8", "x6"), 12, SHAPES[0][2])]:
            x = inputs(eager, rows, grid)
            first_wall, first_cpu, out_c = timed(functools.partial(compiled, *x))
            eager(*x)  # warm-up
            wall: dict[str, list[float]] = {"eager": [], "compiled": []}
            cpu: dict[str, list[float]] = {"eager": [], "compiled": []}
            for _ in range(args.repeats):  # interleaved: load from other processes hits both alike
                for name, model in (("eager", eager), ("compiled", compiled)):
                    w, c, out = timed(functools.partial(model, *x))
                    wall[name].append(w)
                    cpu[name].append(c)
                    if name == "eager":
                        out_e = out
                    else:
                        out_c = out
            (we, wc), (ce, cc) = ((statistics.median(t["eager"]), statistics.median(t["compiled"])) for t in (wall, cpu))
            diff = float((out_c - out_e).norm() / out_e.norm())
            print(f"| {label}, {rows} rows, grid {grid} | {we:.3f} ({ce:.3f}) | {first_wall:.1f} ({first_cpu:.1f}) "
                  f"| {first_wall - wc:.1f} | {wc:.3f} ({cc:.3f}) | {we / wc:.2f}x ({ce / cc:.2f}x) | {diff:.1e} |",
                  flush=True)

if __name__ == "__main__":
    main()
