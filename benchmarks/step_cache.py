"""Step caching: ours (omnidit/dit/cache.py) vs diffusers' own cache hooks, on the same weights.

    python benchmarks/step_cache.py                      # shapes, 6 images, 30 steps + CFG, CPU
    python benchmarks/step_cache.py --images 24 --threads 2

Both sides run through our Pipeline (text encoder, CFG batching, sampler, VAE are shared); only the
transformer differs: our DiT, or diffusers' HunyuanVideoTransformer3DModel loaded from the same
`transformer/` folder, with `FirstBlockCacheConfig` / `MagCacheConfig` hooks (the MagCache curve is
the model folder's calibration, the same numbers ours uses). Each setting generates the same
prompts and seeds in one batch; reported per setting: seconds per image (denoising + decode), the
speed-up over *the same side's* uncached run, the fraction of transformer-block passes run, PSNR
against that side's uncached images, and the shapes adherence ("all") of the images.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from omnidit import Pipeline
from omnidit.dit.cache import build_cache
from omnidit.shapes import parse_prompt, score
from omnidit.shapes.adherence import eval_prompts


class DiffusersDiT(torch.nn.Module):
    """diffusers' transformer behind our DiT's call signature (so the Pipeline can drive it)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, t, text, mask, pooled, guidance=None, *, cache=None):
        if cache is not None:
            raise ValueError("diffusers' transformer takes its cache as hooks (enable_cache), not a policy")
        with self.model.cache_context("batch"):  # one context: cond and uncond share one batched forward
            return self.model(hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask,
                              pooled_projections=pooled, guidance=guidance, return_dict=False)[0]


class BlockPasses:
    """Counts rows through the last single-stream block's output projection (one row = one
    sample-branch's pass through the blocks). Inside the block: diffusers' hooks replace a skipped
    block's forward, so a hook on the block itself would count skipped passes too."""

    def __init__(self, block):
        self.rows = 0
        self.handle = block.proj_out.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.rows += args[0].shape[0]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run(pipe, prompts, seeds, steps, cache=None, repeats=1):
    """-> (frames, (wall, process-CPU) seconds per image, each the least of `repeats` runs: the run
    least disturbed by other load; CPU time, all this process's threads, is the steadier one)."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        gens = pipe.generate_many(prompts, seeds=seeds, steps=steps, cache=cache)
        wall = min(wall, (time.perf_counter() - t0) / len(prompts))
        cpu = min(cpu, (time.process_time() - c0) / len(prompts))
    return [g.frames for g in gens], (wall, cpu)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's own (shapes: 30)")
    ap.add_argument("--seed", type=int, default=5000, help="eval prompts and the first image's seed")
    ap.add_argument("--fb", default="0.05,0.1,0.2,0.3", help="first-block thresholds (both sides)")
    ap.add_argument("--tea", default="0.1,0.2,0.4", help="our teacache thresholds")
    ap.add_argument("--mag", default="0.06,0.12,0.24", help="magcache thresholds (both sides)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=1, help="runs per setting; the fastest is reported")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import FirstBlockCacheConfig, HunyuanVideoTransformer3DModel, MagCacheConfig

    ours = Pipeline.from_pretrained(args.model, device="cpu")
    steps = args.steps or ours.config.steps
    theirs_model = HunyuanVideoTransformer3DModel.from_pretrained(_transformer_dir(args.model)).eval()
    theirs = Pipeline(DiffusersDiT(theirs_model), ours.vae, ours.text_encoder, ours.config, name="diffusers")
    prompts = eval_prompts(args.images, seed=args.seed, video=False)
    seeds = [args.seed + i for i in range(len(prompts))]
    rows = len(prompts) * 2 * steps  # sample-branch block passes of an uncached run (CFG: 2 branches)
    fb = [float(x) for x in args.fb.split(",") if x]
    tea = [float(x) for x in args.tea.split(",") if x]
    mag = [float(x) for x in args.mag.split(",") if x]
    ratios = ours.cache_calibration.get("magcache", {}).get("ratios")

    def adherence(frames):
        return float(np.mean([score(f, parse_prompt(p))["all"] for f, p in zip(frames, prompts)]))

    results = []

    def record(side, setting, frames, sec, passes, ref):
        results.append((side, setting, sec, passes / rows, psnr(np.stack(frames), np.stack(ref[0])), adherence(frames),
                        (ref[1][0] / sec[0], ref[1][1] / sec[1])))

    # warm-up (allocator, first-call costs) on both sides at the full batch, then every setting once,
    # the two sides alternating so load from other processes hits both alike
    run(ours, prompts, seeds, 2)
    run(theirs, prompts, seeds, 2)
    ref_ours = run(ours, prompts, seeds, steps, repeats=args.repeats)
    ref_theirs = run(theirs, prompts, seeds, steps, repeats=args.repeats)
    record("ours", "uncached", *ref_ours, rows, ref_ours)
    record("diffusers", "uncached", *ref_theirs, rows, ref_theirs)
    settings = [("fbcache", t) for t in fb] + [("magcache", t) for t in mag] + [("teacache", t) for t in tea]
    for policy, t in settings:
        if policy in ("magcache", "teacache") and not ours.cache_calibration.get(policy):
            print(f"skipping {policy}: no calibration (omnidit calibrate-cache --model {args.model})")
            continue
        cache = build_cache(policy, t, ours.cache_calibration)
        counter = BlockPasses(ours.dit.single_transformer_blocks[-1])
        try:
            frames, sec = run(ours, prompts, seeds, steps, cache, args.repeats)
        finally:
            counter.handle.remove()
        assert counter.rows == sum(cache.computed) * 2 * args.repeats  # the policy's own count agrees
        record("ours", f"{policy}:{t:g}", frames, sec, counter.rows // args.repeats, ref_ours)
        if policy == "teacache":
            continue  # diffusers ships no TeaCache hook
        config = (FirstBlockCacheConfig(threshold=t) if policy == "fbcache" else
                  MagCacheConfig(threshold=t, mag_ratios=ratios, num_inference_steps=steps))
        theirs_model.enable_cache(config)
        counter = BlockPasses(theirs_model.single_transformer_blocks[-1])
        try:
            frames, sec = run(theirs, prompts, seeds, steps, repeats=args.repeats)
        finally:
            counter.handle.remove()
            theirs_model.disable_cache()
        record("diffusers", f"{policy}:{t:g}", frames, sec, counter.rows // args.repeats, ref_theirs)

    print(f"{args.model}: {len(prompts)} images, {steps} steps + CFG, torch threads {torch.get_num_threads()}, "
          f"fastest of {args.repeats} run(s) per setting")
    print("| side | setting | s / image (wall) | CPU s / image | speed-up vs own uncached (wall) | (CPU) "
          "| blocks run | PSNR vs own uncached (dB) | adherence (all) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side, setting, sec, frac, p, adh, speed in results:
        print(f"| {side} | {setting} | {sec[0]:.3f} | {sec[1]:.3f} | {speed[0]:.2f}x | {speed[1]:.2f}x | {frac:.0%} "
              f"| {p:.1f} | {adh:.3f} |")
    compare(results)


def _transformer_dir(model):
    from omnidit.model_folder import open_model

    return open_model(model).transformer_dir


def compare(results, *, slack_db: float = 0.5) -> None:
    """Print ours vs diffusers from result rows `(side, setting, (wall, cpu) s, passes, PSNR, ...)`:
    uncached and per equal setting, then, for each cached diffusers row, our fastest setting (any
    policy) whose PSNR is at least theirs minus `slack_db` (the rounding between two first-block
    caches at one threshold). Shared with step_cache_anchor.py."""
    by = {(r[0], r[1]): r for r in results}
    for (side, setting), r in by.items():
        d = by.get(("diffusers", setting))
        if side == "ours" and d is not None:
            print(f"{setting}: ours {d[2][0] / r[2][0]:.2f}x (wall) / {d[2][1] / r[2][1]:.2f}x (CPU) faster than "
                  "diffusers")
    ours = [r for r in results if r[0] == "ours" and r[1] != "uncached"]
    for r in results:
        if r[0] != "diffusers" or r[1] == "uncached":
            continue
        ok = [o for o in ours if o[4] >= r[4] - slack_db]
        if not ok:
            print(f"at diffusers {r[1]} ({r[4]:.1f} dB): no setting of ours reaches that PSNR")
            continue
        best = min(ok, key=lambda o: o[2][1])
        print(f"at diffusers {r[1]} ({r[4]:.1f} dB): ours {best[1]} ({best[4]:.1f} dB) is "
              f"{r[2][0] / best[2][0]:.2f}x (wall) / {r[2][1] / best[2][1]:.2f}x (CPU) faster")


if __name__ == "__main__":
    main()
