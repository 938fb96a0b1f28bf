"""`omnidit eval --sweep`: the model under several sampling settings, on the same prompts and seeds.

Every row after the first is also compared with the first row's frames from the same noise:
PSNR and SSIM per sample, averaged (how far a setting moves the picture, e.g. a step cache
against the uncached sampler when the first row is uncached). With `--json` the results are
written after every row and kind, the first row's frames beside them (`<json>.frames.npz`), so
`--resume` continues an interrupted sweep where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from omnidit.cli.common import UserError

PSNR_CAP = 100.0  # dB reported for identical frames (PSNR is infinite there)


def run_sweep(args: argparse.Namespace, pipe, sets, settings: list[dict]) -> int:
    from omnidit.cli.eval_report import table_header, table_row, write_json
    from omnidit.cli.eval_settings import applied, label
    from omnidit.shapes.adherence import eval_pipeline

    path = Path(args.json) if args.json else None
    ident = {"model": pipe.name, "seed": args.seed, "size": args.size,
             "prompts": {kind: len(prompts) for kind, prompts, _ in sets}, "reference": settings[0]}
    done, ref = resumed(path, ident) if args.resume else ({}, {})
    print(table_header("setting", 28, "   s/sample  computed  PSNR(dB)    SSIM"), flush=True)
    rows: list[dict] = []
    for i, setting in enumerate(settings):
        with applied(pipe, setting) as call:
            r = {"model": pipe.name, "setting": setting, "steps": call.get("steps") or pipe.config.steps,
                 "sampler": pipe.config.sampler, "shift": pipe.config.shift}
            rows.append(r)
            for kind, prompts, frames in sets:
                prev = done.get((json.dumps(setting, sort_keys=True), kind))
                if prev is not None and (i > 0 or kind in ref):  # the first row also needs its frames
                    r[kind] = prev
                else:
                    res = eval_pipeline(pipe, prompts, frames=frames, seed=args.seed, height=args.size,
                                        width=args.size, batch_size=args.batch_size, keep_frames=True, **call)
                    kept = res.pop("frames_list")
                    if i == 0:
                        ref[kind] = np.stack(kept)
                        if path is not None:
                            np.savez(frames_path(path), **ref)
                    else:
                        res.update(similarity(kept, ref[kind]))
                    r[kind] = res
                    write_json({**ident, "rows": rows}, args.json)
                print(table_row(kind, label(setting), 28, r[kind]["scores"], cells(r[kind])), flush=True)
    write_json({**ident, "rows": rows}, args.json)
    return 0


def similarity(frames: list[np.ndarray], ref: np.ndarray) -> dict:
    """Mean PSNR (capped at PSNR_CAP) and SSIM of `frames` against the first row's, sample by sample."""
    from omnidit.distill.compare import psnr, ssim

    return {"psnr_vs_first": round(float(np.mean([min(psnr(a, b), PSNR_CAP) for a, b in zip(frames, ref)])), 2),
            "ssim_vs_first": round(float(np.mean([ssim(a, b) for a, b in zip(frames, ref)])), 4)}


def cells(r: dict) -> str:
    psnr = f"{r['psnr_vs_first']:10.2f}" if "psnr_vs_first" in r else f"{'-':>10s}"
    ssim = f"{r['ssim_vs_first']:8.4f}" if "ssim_vs_first" in r else f"{'-':>8s}"
    return f" {r['seconds_per_sample']:10.3f} {r.get('fraction_computed', 1.0):9.1%}{psnr}{ssim}"


def frames_path(path: Path) -> Path:
    return path.with_name(path.name + ".frames.npz")


def resumed(path: Path | None, ident: dict) -> tuple[dict, dict]:
    """({(setting JSON, kind): result}, {kind: first row's frames}) of an earlier run of this sweep."""
    if path is None:
        raise UserError("--resume needs --json (the file an earlier run wrote)")
    if not path.is_file():
        return {}, {}
    old = json.loads(path.read_text())
    for key, value in ident.items():
        if old.get(key) != value:
            raise UserError(f"--resume: {path} was written with {key} {old.get(key)!r}, this run has {value!r}")
    done = {(json.dumps(r["setting"], sort_keys=True), kind): r[kind]
            for r in old.get("rows", []) for kind in ident["prompts"] if kind in r}
    npz = frames_path(path)
    ref = dict(np.load(npz)) if npz.is_file() else {}
    return done, ref
