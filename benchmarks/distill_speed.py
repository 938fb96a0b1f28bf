"""Wall time of one image and one 17-frame video: the distilled student vs its teacher, one run.

    python benchmarks/distill_speed.py                                   # shapes-turbo vs shapes, CPU
    python benchmarks/distill_speed.py --student DIR --teacher shapes --device cuda

What a user waits for at batch size 1 (`Pipeline.generate`: text encoding, every denoising step,
VAE decode): the teacher at its defaults (30 steps with CFG for `shapes`: 60 DiT forwards), the
teacher cut to the student's steps, and the student at its defaults. Rows are interleaved so load
from other processes hits all alike; the median of --repeats runs per row is reported, with the
teacher-default / row ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from omnidit.pipeline import Pipeline

PROMPTS = {1: "a large red circle at the top left on a black background",
           17: "a small blue square on a white background, moving right"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="shapes-turbo")
    ap.add_argument("--teacher", default="shapes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    student = Pipeline.from_pretrained(args.student, device=args.device)
    teacher = Pipeline.from_pretrained(args.teacher, device=args.device)
    n = student.config.steps
    rows = {f"teacher ({teacher.config.steps} steps, {teacher.config.guidance_mode})": (teacher, None),
            f"teacher at {n} steps": (teacher, n),
            f"student ({n} steps, {student.config.guidance_mode})": (student, None)}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    results = {"device": args.device, "threads": torch.get_num_threads(), "student": student.name,
               "teacher": teacher.name, "rows": {}}
    for frames, prompt in PROMPTS.items():
        times: dict[str, list[float]] = {name: [] for name in rows}
        for name, (pipe, steps) in rows.items():  # warm-up
            pipe.generate(prompt, seed=0, frames=frames, steps=steps)
        for r in range(args.repeats):
            for name, (pipe, steps) in rows.items():
                sync()
                t0 = time.perf_counter()
                pipe.generate(prompt, seed=r, frames=frames, steps=steps)
                sync()
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(next(iter(times.values())))
        kind = "image 64x64" if frames == 1 else f"video {frames}x64x64"
        for name, ts in times.items():
            med = statistics.median(ts)
            results["rows"].setdefault(kind, {})[name] = {"seconds": round(med, 4), "speedup": round(base / med, 2)}
            print(f"{kind:18s} {name:32s} {med:7.3f} s   {base / med:5.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
