"""Peak host memory of one 1280x720x129-shaped VAE decode on CPU: tiled vs not, ours vs diffusers.

    python benchmarks/vae_tiling.py [--width 1280 --height 720 --frames 129] [--json OUT]
    python benchmarks/vae_tiling.py --measure MODE ...     # one measurement (a fresh process), JSON on stdout

The VAE is AutoencoderKLHunyuanVideo with HunyuanVideo's compression (8x spatial, 4x temporal,
16 latent channels) but 4 channels per block instead of 128-512, random weights: the memory pattern
of the real decode at a fraction of its size and time. Modes, each in its own subprocess:
- `diffusers-framewise`: diffusers' default (`use_framewise_decoding`, 16-frame windows, no spatial tiles);
- `diffusers-tiled`: diffusers after `enable_tiling()` (256x256 tiles every 192, 16-frame windows every 12);
- `ours-tiled`: omnidit/tokenizers/vae_tiling.py on the same weights and tile settings.
Peak = ru_maxrss after the decode minus before it (the latents, the weights and the imports are in
the baseline); the output video itself (3 x 129 x 720 x 1280 fp32 = 1.4 GB) is part of every peak.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("diffusers-framewise", "diffusers-tiled", "ours-tiled")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vae():
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    return AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=(4, 4, 4, 4), layers_per_block=1,
                                     norm_num_groups=2, mid_block_add_attention=False).eval()


def measure(mode: str, width: int, height: int, frames: int) -> dict:
    import numpy as np
    import torch

    from omnidit.tokenizers.vae_tiling import Tiles, tiled_decode

    vae = _vae()
    z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(0))
    if mode == "diffusers-tiled" or mode == "ours-tiled":
        vae.enable_tiling()
    base = _rss_mb()
    t0 = time.perf_counter()
    with torch.no_grad():
        if mode == "ours-tiled":
            video = tiled_decode(vae, z, Tiles.of(vae))
        elif mode.startswith("diffusers"):
            video = vae.decode(z).sample
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    seconds = time.perf_counter() - t0
    peak = _rss_mb()
    checksum = float(np.float64(video.double().abs().mean()))
    return {"mode": mode, "shape": list(video.shape), "peak_extra_mb": round(peak - base, 1),
            "baseline_mb": round(base, 1), "seconds": round(seconds, 1), "mean_abs": checksum}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", default=None, choices=MODES)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--frames", type=int, default=129)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    size = ["--width", str(args.width), "--height", str(args.height), "--frames", str(args.frames)]
    if args.measure:
        print(json.dumps(measure(args.measure, args.width, args.height, args.frames)))
        return
    rows = []
    print(f"decode of {args.width}x{args.height}x{args.frames} (latents 16 x {(args.frames - 1) // 4 + 1} x "
          f"{args.height // 8} x {args.width // 8}), 4-channel HunyuanVideo VAE, CPU")
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--measure", mode, *size], capture_output=True, text=True,
                             check=False)
        if out.returncode:
            rows.append({"mode": mode, "error": out.stderr.strip().splitlines()[-1] if out.stderr else "killed"})
            print(f"{mode:<20} failed: {rows[-1]['error']}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"{mode:<20} peak +{r['peak_extra_mb']:>8.0f} MiB  {r['seconds']:>7.1f} s  mean|x| {r['mean_abs']:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
