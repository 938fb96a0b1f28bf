"""FP8 weight storage: the DiT's bytes against a bf16 load, and the output error against fp32.

    python benchmarks/fp8_weights.py [--model shapes]

Bytes are counted on the meta device for HunyuanVideo's 13B architecture (nothing allocated), and
on the real `--model` DiT; the error is the relative L2 of one forward (random latents, the model's
own text width) between `weights="fp8"` and fp32, same inputs.
"""

from __future__ import annotations

import argparse
import platform

import torch

from omnidit.dit import DiT, preset
from omnidit.dit.fp8 import fp8_targets, model_bytes, swap_to_fp8
from omnidit.model_folder import open_model


def meta_ratio(name: str) -> float:
    with torch.device("meta"):
        bf16, q = DiT(preset(name)).to(torch.bfloat16), DiT(preset(name)).to(torch.bfloat16)
    swap_to_fp8(q, list(fp8_targets(q)))
    return model_bytes(q) / model_bytes(bf16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    args = ap.parse_args()
    folder = open_model(args.model).transformer_dir
    fp32, fp8 = DiT.from_pretrained(folder, weights="fp32"), DiT.from_pretrained(folder, weights="fp8", dtype=torch.float32)
    c = fp32.config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c.in_channels, 1, 8 * c.patch_size, 8 * c.patch_size, generator=g)
    inputs = dict(hidden_states=x, timestep=torch.tensor([300.0, 800.0]),
                  encoder_hidden_states=torch.randn(2, 12, c.text_embed_dim, generator=g),
                  encoder_attention_mask=torch.ones(2, 12, dtype=torch.long),
                  pooled_projections=torch.randn(2, c.pooled_projection_dim, generator=g),
                  guidance=torch.tensor([6000.0, 6000.0]) if c.guidance_embeds else None)
    with torch.no_grad():
        a, b = fp32(**inputs), fp8(**inputs)
    err = float((b - a).norm() / a.norm())
    with torch.device("meta"):
        bf16_real = DiT(c).to(torch.bfloat16)
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print("| DiT | fp8 bytes / bf16 bytes | rel. L2 error vs fp32 (one forward) |\n|---|---|---|")
    print(f"| HunyuanVideo 13B architecture (meta) | {meta_ratio('hunyuan-video'):.3f} | - |")
    print(f"| {args.model} | {model_bytes(fp8) / model_bytes(bf16_real):.3f} | {err:.2e} |")


if __name__ == "__main__":
    main()
