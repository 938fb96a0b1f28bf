"""Batch-job throughput: items per second with 1 vs 2 generator actors (Ray Data, local Ray on CPU).

    python benchmarks/batch_throughput.py           # shapes-turbo: 64 items, 64x64, its own 4 steps
    python benchmarks/batch_throughput.py --model shapes --items 32 --steps 10

For each actor count it runs a fresh job (new output folder) on one local Ray and prints: the
time to the first result (Ray actor start + model load), the steady rate from the first chunk's
results to the last (after the first actor is warm), and the overall rate. A baseline runs the
same chunks in this process (one torch thread, no Ray): what one actor could reach. On a shared
machine the numbers move with the load (printed alongside).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _prompts(path: Path, n: int, size: str, frames: int, steps: int | None) -> Path:
    colours, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    with open(path, "w") as f:
        for i in range(n):
            line = {"id": f"b{i:04d}", "prompt": f"a {colours[i % 4]} {shapes[i % 3]} on a black background, {i}",
                    "size": size, "frames": frames}
            if steps:
                line["steps"] = steps
            f.write(json.dumps(line) + "\n")
    return path


def _baseline(model: str, prompts: Path, batch_size: int) -> float:
    """Items/s of the same chunks generated in this process with one thread (no Ray)."""
    import torch

    from omnidit.batch.lines import parse_prompts
    from omnidit.batch.plan import chunk_items
    from omnidit.batch.worker import generate_chunk
    from omnidit.pipeline import Pipeline

    torch.set_num_threads(1)
    pipe = Pipeline.from_pretrained(model, device="cpu")
    chunks = chunk_items(parse_prompts(prompts).items, batch_size)
    generate_chunk(pipe, chunks[0])  # warm-up
    t0 = time.perf_counter()
    n = sum(len(generate_chunk(pipe, c)) for c in chunks)
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-turbo", help="shipped model name or model folder")
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--size", default="64x64", help="WxH of every item")
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's own")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--actors", default="1,2", help="actor counts to compare")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="omnidit-batch-bench-") as d:
        _run(args, Path(d))


def _run(args, tmp: Path) -> None:
    from omnidit.batch import BatchConfig, run_batch
    from omnidit.batch.runner import start_ray

    prompts = _prompts(tmp / "prompts.jsonl", args.items, args.size, args.frames, args.steps)
    counts = [int(k) for k in args.actors.split(",")]
    print(f"model={args.model} items={args.items} size={args.size} frames={args.frames} steps={args.steps} "
          f"batch_size={args.batch_size} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    base = _baseline(args.model, prompts, args.batch_size)
    print(f"in-process baseline (1 thread, no Ray): {base:.2f} items/s")

    t0 = time.perf_counter()
    start_ray(None, "cpu", max(counts))
    print(f"ray init: {time.perf_counter() - t0:.1f}s")
    import ray

    try:
        for k in counts:
            stamps: list[float] = []
            t0 = time.perf_counter()
            s = run_batch(BatchConfig(prompts=prompts, out=tmp / f"out{k}", model=args.model, concurrency=k,
                                      batch_size=args.batch_size, progress=False),
                          on_row=lambda r: stamps.append(time.perf_counter()))
            wall = time.perf_counter() - t0
            assert s.ok == args.items, s.line()
            # Results arrive a chunk at a time: count the span from the first chunk's arrival to the last.
            first = min(args.batch_size, len(stamps))
            steady = (len(stamps) - first) / max(stamps[-1] - stamps[first - 1], 1e-9)
            print(f"actors={k}: first result {stamps[0] - t0:.1f}s, steady {steady:.2f} items/s, "
                  f"overall {args.items / wall:.2f} items/s ({wall:.1f}s, load {os.getloadavg()[0]:.1f})")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
