"""Step caching at >= 1,000 tokens: ours vs diffusers' cache hooks on one random HunyuanVideo.

    python benchmarks/step_cache_anchor.py                          # 1 x 64 x 64 latent = 1,024 tokens
    python benchmarks/step_cache_anchor.py --frames 4 --height 32 --width 32 --repeats 3   # also 1,024

The shapes benchmark (step_cache.py) runs 64 video tokens per sample, where per-step overheads
weigh more than at real sizes; this one runs the same comparison at a token count where the
blocks dominate. One random HunyuanVideo (diffusers' `HunyuanVideoTransformer3DModel`, every
weight drawn from N(0, 0.02)) is shared by both sides (our DiT loads its state dict). Each side
runs the same 30-step Euler flow loop with CFG (cond and uncond in one batch of 2), the same noise,
text (`--text-valid` of 256 tokens real, as HunyuanVideo's padded prompts) and pooled embeddings.
Ours is cached by a policy from omnidit/dit/cache.py; diffusers' by `FirstBlockCacheConfig` /
`MagCacheConfig` (the MagCache curve: our calibration Recorder on this model, given to both).
Reported per setting: seconds per generation (fastest of --repeats), speed-up vs the same side's
uncached loop, share of block passes run, and PSNR of the final latents against the same side's
uncached latents (peak = the uncached latents' max |value|).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from omnidit.dit import DiT, DiTConfig
from omnidit.dit.cache import Recorder, build_cache, fit_calibration
from step_cache import BlockPasses, compare  # benchmarks/ is the script's own folder on sys.path

# Small widths so 30 steps x 2 branches x ~20 settings fit a CPU run; HunyuanVideo's block layout.
ANCHOR = DiTConfig(
    in_channels=16, out_channels=16, num_attention_heads=4, attention_head_dim=64, num_layers=2,
    num_single_layers=4, num_refiner_layers=1, text_embed_dim=256, pooled_projection_dim=128,
    rope_axes_dim=(16, 24, 24),
)  # fmt: skip


def euler_cfg(forward, x0, text, mask, pooled, guidance, steps: int, scale: float, shift: float) -> torch.Tensor:
    """Flow-matching Euler with CFG, [cond | uncond] in one batch: x0 [1, C, F, H, W] -> latents."""
    sig = torch.linspace(1.0, 0.0, steps + 1)
    sig = shift * sig / (1 + (shift - 1) * sig)  # the flow shift HunyuanVideo's scheduler applies
    x = x0
    for i in range(steps):
        t = torch.full((2,), float(sig[i]) * 1000.0)
        v = forward(torch.cat([x, x]), t, text, mask, pooled, guidance)  # [2, C, F, H, W]
        v = v[1:] + scale * (v[:1] - v[1:])
        x = x + (sig[i + 1] - sig[i]) * v
    return x


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float(((a.double() - ref.double()) ** 2).mean())
    peak = float(ref.abs().max())
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=1, help="latent frames")
    ap.add_argument("--height", type=int, default=64, help="latent height (patch 2: 32 token rows)")
    ap.add_argument("--width", type=int, default=64, help="latent width")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance-scale", type=float, default=6.0)
    ap.add_argument("--shift", type=float, default=7.0, help="HunyuanVideo's default flow shift")
    ap.add_argument("--text-valid", type=int, default=80, help="real tokens of 256")
    ap.add_argument("--fb", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--mag", default="0.06,0.12,0.24")
    ap.add_argument("--tea", default="", help="our teacache thresholds (calibrated on this model)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per setting; the fastest is reported")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import FirstBlockCacheConfig, HunyuanVideoTransformer3DModel, MagCacheConfig
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    cfg = ANCHOR
    torch.manual_seed(0)
    theirs = HunyuanVideoTransformer3DModel(**{k: v for k, v in cfg.to_dict().items() if not k.startswith("_")})
    theirs.eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.02)
    with torch.device("meta"):
        ours = DiT(cfg).eval()
    ours.load_state_dict(theirs.state_dict(), assign=True)  # the same tensors: one copy of the weights

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, cfg.in_channels, args.frames, args.height, args.width, generator=g)
    text = torch.randn(2, 256, cfg.text_embed_dim, generator=g)
    mask = torch.zeros(2, 256, dtype=torch.long)
    mask[0, : args.text_valid] = 1
    mask[1, : max(1, args.text_valid // 8)] = 1  # the negative prompt is shorter
    pooled = torch.randn(2, cfg.pooled_projection_dim, generator=g)
    guidance = torch.full((2,), 6000.0) if cfg.guidance_embeds else None
    tokens = args.frames * args.height * args.width // (cfg.patch_size**2 * cfg.patch_size_t)
    rows = 2 * args.steps

    def ours_fn(cache):
        def fwd(x, t, *rest):
            return ours(x, t, *rest, cache=cache)
        return fwd

    def theirs_fn(x, t, text, mask, pooled, guidance):
        with theirs.cache_context("loop"):
            return theirs(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                          pooled_projections=pooled, guidance=guidance, return_dict=False)[0]

    def loop(side, cache=None):
        """-> (latents, (wall, process-CPU) seconds, each the least of --repeats runs, block passes)."""
        wall = cpu = float("inf")
        out = None
        block = (ours if side == "ours" else theirs).single_transformer_blocks[-1]
        counter = BlockPasses(block)
        try:
            for _ in range(args.repeats):
                if cache is not None:
                    cache.begin(steps=args.steps, branches=2)
                fwd = ours_fn(cache) if side == "ours" else theirs_fn
                t0, c0 = time.perf_counter(), time.process_time()
                with torch.inference_mode():
                    out = euler_cfg(fwd, x0, text, mask, pooled, guidance, args.steps, args.guidance_scale,
                                    args.shift)
                wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
        finally:
            counter.handle.remove()
        return out, (wall, cpu), counter.rows / args.repeats

    # calibration for magcache/teacache: our recorder on this model, the curve shared with diffusers
    rec = Recorder()
    rec.begin(steps=args.steps, branches=2)
    with torch.inference_mode():
        euler_cfg(ours_fn(rec), x0, text, mask, pooled, guidance, args.steps, args.guidance_scale, args.shift)
    calibration = fit_calibration(rec.records)
    ratios = calibration["magcache"]["ratios"]

    loop("ours"), loop("theirs")  # warm-up
    ref = {"ours": loop("ours"), "diffusers": loop("theirs")}
    results = [(side, "uncached", r[1], 1.0, float("inf"), (1.0, 1.0)) for side, r in ref.items()]

    def record(side, setting, out, sec, passes):
        unc = ref[side][1]
        results.append((side, setting, sec, passes / rows, psnr(out, ref[side][0]), (unc[0] / sec[0], unc[1] / sec[1])))

    fb = [float(v) for v in args.fb.split(",") if v]
    mag = [float(v) for v in args.mag.split(",") if v]
    tea = [float(v) for v in args.tea.split(",") if v]
    for policy, th in [("fbcache", v) for v in fb] + [("magcache", v) for v in mag] + [("teacache", v) for v in tea]:
        cache = build_cache(policy, th, calibration)
        out, sec, passes = loop("ours", cache)
        record("ours", f"{policy}:{th:g}", out, sec, passes)
        if policy == "teacache":
            continue  # diffusers ships no TeaCache hook
        hook = (FirstBlockCacheConfig(threshold=th) if policy == "fbcache" else
                MagCacheConfig(threshold=th, mag_ratios=ratios, num_inference_steps=args.steps))
        theirs.enable_cache(hook)
        try:
            out, sec, passes = loop("theirs")
        finally:
            theirs.disable_cache()
        record("diffusers", f"{policy}:{th:g}", out, sec, passes)

    n_params = sum(p.numel() for p in ours.parameters()) / 1e6
    print(f"random HunyuanVideo {n_params:.1f}M params, {tokens} video tokens, text {args.text_valid}/256, "
          f"{args.steps} steps + CFG (batch 2), fastest of {args.repeats}, torch threads {torch.get_num_threads()}")
    print("| side | setting | s / generation (wall) | CPU s | speed-up vs own uncached (wall) | (CPU) | blocks run "
          "| PSNR vs own uncached (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for side, setting, sec, frac, p, speed in results:
        print(f"| {side} | {setting} | {sec[0]:.3f} | {sec[1]:.3f} | {speed[0]:.2f}x | {speed[1]:.2f}x | {frac:.0%} "
              f"| {p:.1f} |")
    compare(results)


if __name__ == "__main__":
    main()
