"""The planner's memory terms (omnidit/parallel/memory.py) against measured peaks of small CPU configs.

    nice -n 10 python benchmarks/planner_memory.py [--json OUT]      # the table (markdown)
    python benchmarks/planner_memory.py --measure CASE_JSON          # one case, in this process: JSON out

Cases: (a) one DiT forward (inference, no_grad, the sdpa backend) of a small HunyuanVideo-shaped config
(4 heads x 64, 2 dual + 2 single blocks) at a few token counts, batch 1 and 2 (CFG), fp32 and bf16;
(b) one decode of a small-channel HunyuanVideo VAE (block_out_channels 8/16/32/32: the real 128/256/512/512
divided by 16, so the full-resolution levels keep their channel ratios) through VideoVAE, the product's
decode path: untiled (diffusers' default 16-frame windows, whole frames) and tiled (256x256 tiles, vae_tiling.py's
window-at-a-time decode).

How the peak is measured, and why: each case runs in a fresh subprocess; after the model, the inputs and a
warm-up call on a small input (oneDNN and OpenMP set-up, not the phase's memory) are in place, the kernel's
high-water mark is reset (/proc/self/clear_refs "5": VmHWM := VmRSS) and the peak is VmHWM after the call
minus VmRSS before it. Plain ru_maxrss minus a baseline would hide the phase under any earlier, higher
peak (building the model in fp32 before the bf16 cast); torch.profiler's memory events miss what oneDNN
and the allocator hold outside torch's tensors, which the GPU's allocator would count as well. glibc is
told (MALLOC_MMAP_THRESHOLD_) to map every large block on its own, so a freed block leaves the RSS at once
and the RSS tracks the live tensors, as max_memory_allocated does on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

MIB = 2**20
DIT_CASES = [  # (latent frames, latent height, latent width, batch, dtype); 16 x 16 patches per frame at 32x32
    (4, 32, 32, 1, "float32"),
    (8, 32, 32, 1, "float32"),
    (16, 32, 32, 1, "float32"),
    (8, 32, 32, 2, "float32"),
    (8, 32, 32, 1, "bfloat16"),
    (16, 32, 32, 1, "bfloat16"),
    (8, 32, 32, 2, "bfloat16"),
]
VAE_CASES = [  # (frames, height, width, tiled)
    (9, 256, 256, False),
    (9, 384, 512, False),
    (33, 128, 128, False),  # 9 latent frames: three temporal windows
    (5, 256, 384, True),
    (9, 384, 512, True),
    (33, 256, 384, True),  # three windows of two tiles each
]
TEXT_TOKENS = 64


def dit_config():
    """HunyuanVideo's shape (patch 1x2x2, 16 latent channels, mlp 4, rope axes 16/24/24 of 64) at 4 x 64 heads."""
    from omnidit.dit import preset

    return preset("tiny").replace(in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=64,
                                  num_layers=2, num_single_layers=2, mlp_ratio=4.0, text_embed_dim=64,
                                  pooled_projection_dim=32, rope_axes_dim=(16, 24, 24))


VAE_CHANNELS = (8, 16, 32, 32)


def _status_kb(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _peak_of(fn) -> float:
    """MiB the call `fn()` adds at its peak over the RSS before it (see the module docstring)."""
    import gc

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    out = fn()
    peak = _status_kb("VmHWM")
    del out
    return (peak - before) / 1024


def measure_dit(frames: int, height: int, width: int, batch: int, dtype: str) -> dict:
    import torch

    from omnidit.dit import DiT

    torch.manual_seed(0)
    cfg, dt = dit_config(), getattr(torch, dtype)
    dit = DiT(cfg).to(dt).eval()

    def inputs(f, h, w):
        return dict(hidden_states=torch.randn(batch, cfg.in_channels, f, h, w, dtype=dt),
                    timestep=torch.full((batch,), 500.0), guidance=torch.full((batch,), 6000.0, dtype=dt),
                    encoder_hidden_states=torch.randn(batch, TEXT_TOKENS, cfg.text_embed_dim, dtype=dt),
                    encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
                    pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, dtype=dt))

    with torch.no_grad():
        dit(**inputs(1, 8, 8))  # warm-up
        x = inputs(frames, height, width)
        peak = _peak_of(lambda: dit(**x))
    return {"peak_mib": round(peak, 1)}


def measure_vae(frames: int, height: int, width: int, tiled: bool) -> dict:
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.tokenizers.vae import VideoVAE

    torch.manual_seed(0)
    vae = VideoVAE(AutoencoderKLHunyuanVideo(latent_channels=16, block_out_channels=VAE_CHANNELS, layers_per_block=2,
                                             norm_num_groups=4, mid_block_add_attention=False),
                   auto_tiling_pixels=None)
    if tiled:
        vae.enable_tiling()
    with torch.no_grad():
        vae.decode(torch.randn(1, 16, 2, 8, 8))  # warm-up
        z = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
        peak = _peak_of(lambda: vae.decode(z))
    return {"peak_mib": round(peak, 1)}


def estimate_dit(frames: int, height: int, width: int, batch: int, dtype: str) -> float:
    """memory.py's activation term for this forward (latent frames/height/width, one GPU), in MiB."""
    from dataclasses import replace

    from omnidit.parallel.memory import activation_bytes, workload_of
    from omnidit.parallel.state import ParallelConfig

    w = workload_of(dit_config(), frames=(frames - 1) * 4 + 1, height=height * 8, width=width * 8,
                    text_tokens=TEXT_TOKENS)
    w = replace(w, batch=batch, bytes_per_el=4 if dtype == "float32" else 2)
    return activation_bytes(w, ParallelConfig()) / MIB


def estimate_vae(frames: int, height: int, width: int, tiled: bool) -> float:
    """memory.py's VAE decode term, fp32, less its weights (they are in the measurement's baseline), in MiB."""
    from omnidit.parallel.memory import ModelMemory, vae_decode_bytes

    m = ModelMemory(block_params=0, fp8_params=0, fp8_rows=0, other_params=0, blocks=0, largest_block=0,
                    text_encoder_bytes=0, vae_params=0, vae_channels=VAE_CHANNELS[0])
    return vae_decode_bytes(m, frames, height, width, tiled, b=4) / MIB


def run_case(case: dict, timeout: float = 600) -> dict:
    """`case` in a fresh process (single-threaded: the shared 2-core VM; peaks do not depend on threads)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(case)], capture_output=True, text=True,
                         timeout=timeout, check=False, env=env)
    if out.returncode:
        raise RuntimeError(f"case {case} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def dit_row(frames, height, width, batch, dtype) -> dict:
    tokens = frames * (height // 2) * (width // 2)
    est = estimate_dit(frames, height, width, batch, dtype)
    got = run_case({"kind": "dit", "args": [frames, height, width, batch, dtype]})["peak_mib"]
    return {"config": f"DiT 4x64, 2+2 blocks, batch {batch}", "tokens": f"{tokens:,} + {TEXT_TOKENS}",
            "dtype": dtype.replace("float32", "fp32").replace("bfloat16", "bf16"), "estimated_mib": est,
            "measured_mib": got, "ratio": est / got}


def vae_row(frames, height, width, tiled) -> dict:
    est = estimate_vae(frames, height, width, tiled)
    got = run_case({"kind": "vae", "args": [frames, height, width, tiled]})["peak_mib"]
    return {"config": f"VAE 8/16/32/32 ch, {'tiled' if tiled else 'untiled'}", "tokens": f"{frames} x {height}x{width}",
            "dtype": "fp32", "estimated_mib": est, "measured_mib": got, "ratio": est / got}


def markdown(rows: list[dict]) -> str:
    lines = ["| config | tokens (video + text) / video | dtype | estimated MiB | measured MiB | est. / measured |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['tokens']} | {r['dtype']} | {r['estimated_mib']:,.1f} "
                     f"| {r['measured_mib']:,.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", default=None, help="one case as JSON: {kind: dit|vae, args: [...]}")
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args()
    if args.measure:
        case = json.loads(args.measure)
        fn = {"dit": measure_dit, "vae": measure_vae}[case["kind"]]
        print(json.dumps(fn(*case["args"])))
        return
    rows = [dit_row(*c) for c in DIT_CASES] + [vae_row(*c) for c in VAE_CASES]
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
