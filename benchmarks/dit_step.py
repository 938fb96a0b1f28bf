"""One DiT forward: omnidit vs diffusers' HunyuanVideoTransformer3DModel on the same weights and input.

    python benchmarks/dit_step.py                       # CPU, mid-size config, ~1.9k video tokens
    python benchmarks/dit_step.py --device cuda --dtype bfloat16 --preset hunyuan-video \
        --frames 9 --height 60 --width 104               # latent sizes (F, H, W), not pixels

Prints the median wall and process-CPU time of each over --repeats interleaved runs, their ratios
and the relative difference ||ours - diffusers|| / ||diffusers|| of the outputs. Text is `--text-len` tokens of which
`--text-valid` are real (HunyuanVideo's pipeline pads prompts to 256).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from omnidit.dit import PRESETS, DiT, DiTConfig, preset

# Mid-size CPU config: 8 heads x 64, 2 dual + 4 single blocks.
BENCH = DiTConfig(
    in_channels=16, out_channels=16, num_attention_heads=8, attention_head_dim=64, num_layers=2,
    num_single_layers=4, num_refiner_layers=1, text_embed_dim=1024, pooled_projection_dim=768,
    rope_axes_dim=(16, 24, 24),
)  # fmt: skip


def _time_both(fns, repeats: int, sync) -> tuple[list[float], list[float], list[torch.Tensor]]:
    """Median wall and process-CPU time of each fn. Runs are interleaved so load from other processes
    hits both alike; CPU time is the steadier number on a shared machine."""
    outs = [fn() for fn in fns]  # warm-up (allocator, kernels)
    sync()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            w0, c0 = time.perf_counter(), time.process_time()
            outs[i] = fn()
            sync()
            wall[i].append(time.perf_counter() - w0)
            cpu[i].append(time.process_time() - c0)
    return [statistics.median(t) for t in wall], [statistics.median(t) for t in cpu], outs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--preset", default="bench", choices=["bench", *PRESETS], help="'bench': 8x64 heads, 2+4 blocks")
    ap.add_argument("--frames", type=int, default=5, help="latent frames")
    ap.add_argument("--height", type=int, default=32, help="latent height")
    ap.add_argument("--width", type=int, default=48, help="latent width")
    ap.add_argument("--text-len", type=int, default=256)
    ap.add_argument("--text-valid", type=int, default=80, help="real tokens per prompt (<= --text-len)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--attention-backend", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args(argv)
    if not 1 <= args.text_valid <= args.text_len:
        ap.error("--text-valid must be in [1, --text-len]")

    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import HunyuanVideoTransformer3DModel
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its warning about casting with .to() does not apply here

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = BENCH if args.preset == "bench" else preset(args.preset)
    torch.manual_seed(0)
    ref_kwargs = {k: v for k, v in cfg.to_dict().items() if not k.startswith("_")}
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype (13B in fp32 would not fit beside it)
    try:
        with torch.device(device):
            ref = HunyuanVideoTransformer3DModel(**ref_kwargs).eval()
    finally:
        torch.set_default_dtype(default_dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.02)  # every parameter non-zero so both models do the full work
    with torch.device("meta"):
        ours = DiT(cfg, attention_backend=args.attention_backend).eval()
    ours.load_state_dict(ref.state_dict(), assign=True)  # shares diffusers' tensors: one copy of the weights

    B = args.batch
    x = torch.randn(B, cfg.in_channels, args.frames, args.height, args.width, device=device, dtype=dtype)
    t = torch.full((B,), 700.0, device=device)
    text = torch.randn(B, args.text_len, cfg.text_embed_dim, device=device, dtype=dtype)
    mask = torch.zeros(B, args.text_len, dtype=torch.long, device=device)
    for b in range(B):  # later samples get slightly shorter prompts so batch > 1 exercises per-sample lengths
        mask[b, : max(1, args.text_valid - 7 * b)] = 1
    pooled = torch.randn(B, cfg.pooled_projection_dim, device=device, dtype=dtype)
    guidance = torch.full((B,), 6000.0, device=device, dtype=dtype) if cfg.guidance_embeds else None
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    p, pt = cfg.patch_size, cfg.patch_size_t
    n_tokens = (args.frames // pt) * (args.height // p) * (args.width // p)
    n_params = sum(q.numel() for q in ours.parameters())
    print(
        f"device={device} dtype={args.dtype} threads={torch.get_num_threads()} preset={args.preset} "
        f"params={n_params / 1e6:.1f}M batch={B} latent={args.frames}x{args.height}x{args.width} "
        f"video_tokens={n_tokens} text={args.text_valid}/{args.text_len} backend={ours.attention_backend.name}"
    )
    with torch.inference_mode():
        (t_ref, t_ours), (c_ref, c_ours), (out_ref, out_ours) = _time_both(
            [
                lambda: ref(x, t, text, mask, pooled, guidance, return_dict=False)[0],
                lambda: ours(x, t, text, mask, pooled, guidance),
            ],
            args.repeats,
            sync,
        )
    rel = ((out_ours.float() - out_ref.float()).norm() / out_ref.float().norm()).item()
    print(f"median of {args.repeats}     wall ms   process-CPU ms")
    print(f"diffusers    {t_ref * 1000:10.1f}   {c_ref * 1000:10.1f}")
    print(f"omnidit      {t_ours * 1000:10.1f}   {c_ours * 1000:10.1f}")
    print(f"speedup      {t_ref / t_ours:9.2f}x   {c_ref / c_ours:9.2f}x   rel_diff={rel:.2e}")


if __name__ == "__main__":
    main()
