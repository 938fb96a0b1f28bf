"""The GPU suite (benchmarks/gpu_suite.sh runs it): one JSON of rows, each with its time and peak memory.

    python benchmarks/gpu_suite.py --out DIR            # on a GPU: HunyuanVideo 13B architecture, bf16
    python benchmarks/gpu_suite.py --out DIR --tiny     # CPU preflight at tiny sizes (seconds)

Rows (random weights, the same weights on both sides of a comparison):
- dit/ours/<backend> and dit/diffusers: one DiT forward at `--frames x --height x --width` latents
  (default 9 x 90 x 160 latents = 720p x 33 frames, 32,400 video tokens) + 256 text tokens;
  every attention backend installed (sdpa, flash_attn, xformers);
- dit/ours/fp8: the same with the blocks' Linears in float8 (upcast on use);
- cache/fbcache: `--cache-steps` steps with FirstBlockCache vs without (time per step, steps computed);
- vae/ours-tiled and vae/diffusers-tiled: HunyuanVideo's VAE architecture, tiled decode of the latents
  of one 720p x 33 video (`--vae-frames` latents).
Times are medians of `--repeats` runs after one warm-up; peak memory is torch.cuda.max_memory_allocated
(GPU) or the process's ru_maxrss (CPU) over the row.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from omnidit.dit import BACKENDS, DiT, preset


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset(dev):
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gb(dev) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(fn, repeats: int, dev) -> tuple[float, object]:
    out = fn()  # warm-up
    _sync(dev)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """N(0, 0.02) weights drawn on their own device (13B values: not through the host)."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.normal_(0.0, 0.02, generator=torch.Generator(device=p.device).manual_seed(seed + i))


def _dit(cfg, dev, dtype) -> DiT:
    with torch.device("meta"):
        m = DiT(cfg).to(dtype)  # allocated once, directly in the storage dtype
    m = m.to_empty(device=dev)
    _randomize_(m)
    return m.eval()


def _inputs(cfg, args, dev, dtype):
    g = torch.Generator(device="cpu").manual_seed(1)
    T, H, W = args.frames, args.height, args.width
    return dict(
        hidden_states=torch.randn(1, cfg.in_channels, T, H, W, generator=g).to(dev, dtype),
        timestep=torch.tensor([500.0], device=dev),
        encoder_hidden_states=torch.randn(1, args.text, cfg.text_embed_dim, generator=g).to(dev, dtype),
        encoder_attention_mask=torch.ones(1, args.text, dtype=torch.long, device=dev),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g).to(dev, dtype),
        guidance=torch.tensor([6000.0], device=dev) if cfg.guidance_embeds else None,
    )


def dit_rows(args, dev, dtype) -> list[dict]:
    from diffusers import HunyuanVideoTransformer3DModel

    from omnidit.dit.cache import build_cache
    from omnidit.dit.fp8 import model_bytes, quantize_model

    cfg = _config(args)
    x = _inputs(cfg, args, dev, dtype)
    rows = []
    _reset(dev)
    ours = _dit(cfg, dev, dtype)
    with torch.no_grad():
        for name, backend in BACKENDS.items():
            if not backend.available() or dtype not in backend.dtypes or dev.type not in backend.device_types:
                rows.append({"row": f"dit/ours/{name}", "skipped": "not installed or not for this device/dtype"})
                continue
            ours.set_attention_backend(name)
            _reset(dev)
            s, ref = _timed(lambda m=ours: m(**x), args.repeats, dev)
            rows.append({"row": f"dit/ours/{name}", "s": s, "peak_gb": _peak_gb(dev)})
            if name == "sdpa":
                want = ref.float()
        ours.set_attention_backend("sdpa")
        # Step caching: a fixed threshold; steps at slightly different timesteps, as a sampler would.
        for policy in (None, "fbcache"):
            cache = build_cache(policy, args.cache_threshold) if policy else None
            if cache is not None:
                cache.begin(steps=args.cache_steps)

            def loop(cache=cache, model=ours):
                if cache is not None:
                    cache.begin(steps=args.cache_steps)
                for i in range(args.cache_steps):
                    t = torch.tensor([1000.0 * (1 - i / args.cache_steps)], device=dev)
                    model(**{**x, "timestep": t}, cache=cache)

            _reset(dev)
            s, _ = _timed(loop, 1, dev)
            row = {"row": f"cache/{policy or 'none'}", "s_per_step": s / args.cache_steps, "peak_gb": _peak_gb(dev)}
            if cache is not None:
                row.update(threshold=args.cache_threshold, steps_computed=sum(cache.computed))
            rows.append(row)
        del loop  # it holds the model as a default argument
        sd = ours.state_dict()
        bf16_bytes = model_bytes(ours)
        # diffusers on the same weights (ours deleted first: one 13B copy on the GPU at a time)
        with torch.device("meta"):
            ref_model = HunyuanVideoTransformer3DModel(**{k: v for k, v in cfg.to_dict().items()
                                                          if not k.startswith("_")})
        ref_model = ref_model.to(dtype).to_empty(device=dev)
        ref_model.load_state_dict(sd)
        del ours, sd
        _reset(dev)
        s, out = _timed(lambda m=ref_model: m(**x, return_dict=False)[0], args.repeats, dev)
        rows.append({"row": "dit/diffusers", "s": s, "peak_gb": _peak_gb(dev),
                     "rel_diff_vs_ours": float((out.float() - want).norm() / want.norm())})
        fp8_src = ref_model.state_dict()
        del ref_model, out
        _reset(dev)
        ours = _dit(cfg, dev, dtype)
        ours.load_state_dict(fp8_src)
        del fp8_src
        quantize_model(ours)
        _reset(dev)
        s, out = _timed(lambda m=ours: m(**x), args.repeats, dev)
        rows.append({"row": "dit/ours/fp8", "s": s, "peak_gb": _peak_gb(dev), "bytes_vs_unquantised": model_bytes(ours) /
                     bf16_bytes, "rel_err_vs_unquantised": float((out.float() - want).norm() / want.norm())})
        del ours, out
    return rows


def vae_rows(args, dev, dtype) -> list[dict]:
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.tokenizers.vae_tiling import Tiles, tiled_decode

    kw = {} if not args.tiny else dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4, layers_per_block=1)
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(**kw).to(dev, dtype).eval()
    h, w = args.vae_height, args.vae_width
    z = torch.randn(1, vae.config.latent_channels, args.vae_frames, h, w, generator=torch.Generator().manual_seed(2))
    z = z.to(dev, dtype)
    vae.enable_tiling()
    rows = []
    with torch.no_grad():
        for name, fn in (("vae/ours-tiled", lambda: tiled_decode(vae, z, Tiles.of(vae))),
                         ("vae/diffusers-tiled", lambda: vae.decode(z).sample)):
            _reset(dev)
            s, out = _timed(fn, 1, dev)
            rows.append({"row": name, "s": s, "peak_gb": _peak_gb(dev), "shape": list(out.shape)})
            del out
    return rows


def _config(args):
    if args.tiny:
        return preset("tiny").replace(num_layers=2, num_single_layers=2, attention_head_dim=16,
                                      rope_axes_dim=(4, 6, 6))
    return preset("hunyuan-video")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for suite.json")
    ap.add_argument("--tiny", action="store_true", help="CPU preflight: tiny model and sizes")
    ap.add_argument("--frames", type=int, default=9, help="latent frames (9 = 33 video frames)")
    ap.add_argument("--height", type=int, default=90, help="latent height (90 = 720 px)")
    ap.add_argument("--width", type=int, default=160, help="latent width (160 = 1280 px)")
    ap.add_argument("--text", type=int, default=256, help="text tokens")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--cache-steps", type=int, default=6)
    ap.add_argument("--cache-threshold", type=float, default=0.1)
    ap.add_argument("--vae-frames", type=int, default=9)
    ap.add_argument("--vae-height", type=int, default=90)
    ap.add_argument("--vae-width", type=int, default=160)
    args = ap.parse_args(argv)
    if args.tiny:
        args.frames, args.height, args.width, args.text, args.repeats = 2, 4, 6, 8, 1
        args.cache_steps, args.vae_frames, args.vae_height, args.vae_width = 3, 3, 6, 8
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    t0 = time.perf_counter()
    rows = []
    for part in (dit_rows, vae_rows):
        try:
            got = part(args, dev, dtype)
        except Exception as e:  # noqa: BLE001  (one failing part must not lose the others' rows)
            got = [{"row": part.__name__, "error": f"{type(e).__name__}: {e}"}]
        for r in got:
            print(json.dumps(r), flush=True)
        rows.extend(got)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "dtype": str(dtype), "tiny": args.tiny, "seconds": time.perf_counter() - t0,
            "latents": [args.frames, args.height, args.width], "text_tokens": args.text}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "suite.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out / 'suite.json'} in {info['seconds']:.0f} s")


if __name__ == "__main__":
    main()
