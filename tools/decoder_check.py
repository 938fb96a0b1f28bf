"""Score other decoders on a model's own latents, without sampling again.

    python tools/decoder_check.py --model shapes --vae runs/x/vae runs/y/vae [--n 200 --videos 100]

The DiT's latents do not depend on the decoder, so `omnidit eval`'s rows for a model with a
swapped `vae/` (same latent space) are the model's eval latents decoded by that VAE. This samples
those latents once, with eval's prompts, seeds and batches (`--seed`, batches of 8), keeps them in
`--cache`, and then scores each decoder in seconds: the model's own VAE first, then each `--vae`.
For images it also prints what the small squares and triangles were read as (where shapes fail).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ATTRS = ("background", "colour", "shape", "position", "size", "count", "motion", "all")


def eval_sets(n: int, videos: int, seed: int):
    """`omnidit eval`'s prompt sets: (kind, prompts, frames) for its `n` images (prompts from
    `seed`) and `videos` videos (prompts from `seed + 1`); a count below 1 is skipped."""
    from omnidit.shapes.adherence import VIDEO_FRAMES, eval_prompts

    for kind, count, frames, prompt_seed in (("images", n, 1, seed), ("videos", videos, VIDEO_FRAMES, seed + 1)):
        if count >= 1:
            yield kind, eval_prompts(count, seed=prompt_seed, video=frames > 1), frames


def eval_latents(pipe, prompts: list[str], *, frames: int, seed: int, size: int = 64,
                 batch_size: int = 8, **sampling) -> torch.Tensor:
    """What `eval_pipeline` decodes: sample i from seed `seed + i`, in batches of `batch_size`
    (`sampling`: generate_latents' steps/guidance overrides)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        z, _, _ = pipe.generate_latents(batch, seeds=[seed + start + i for i in range(len(batch))], frames=frames,
                                        height=size, width=size, **sampling)
        out.append(z.cpu())
        print(f"\r  sampled {start + len(batch)}/{len(prompts)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return torch.cat(out)


def decode_all(vae, latents: torch.Tensor):
    from omnidit.tokenizers import frames_to_uint8

    return torch.cat([frames_to_uint8(vae.decode(latents[i:i + 8])) for i in range(0, len(latents), 8)]).numpy()


def score_decoder(frames, prompts: list[str]) -> dict[str, float]:
    """The evaluator's accuracy per attribute over decoded `frames` (the attributes that apply)."""
    from omnidit.shapes import parse_prompt
    from omnidit.shapes.evaluate import evaluate_many

    scores = evaluate_many(zip(frames, (parse_prompt(p) for p in prompts)))
    return {k: v for k, v in scores.items() if v is not None}


def small_shape_reads(frames, prompts: list[str]) -> dict[str, Counter]:
    """For small squares and triangles: how often each shape (or "missing") is read at the middle
    frame, from the largest blob of the object's colour."""
    from omnidit.shapes import detect, parse_prompt

    reads = {"square": Counter(), "triangle": Counter()}
    for f, p in zip(frames, prompts):
        blobs = detect(f)[1]
        for o in parse_prompt(p).objects:
            if o.size == "small" and o.shape in reads:
                mine = [b for b in blobs if b.colour == o.colour]
                reads[o.shape][max(mine, key=lambda b: b.area).shape if mine else "missing"] += 1
    return reads


def main() -> None:
    from omnidit.pipeline import Pipeline, resolve_model
    from omnidit.tokenizers import VideoVAE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes", help="the model whose latents are decoded (name or folder)")
    ap.add_argument("--vae", nargs="*", default=[], help="other VAE folders with the model's latent space")
    ap.add_argument("--n", type=int, default=200, help="image prompts (as omnidit eval --n)")
    ap.add_argument("--videos", type=int, default=100, help="video prompts (as omnidit eval --videos)")
    ap.add_argument("--seed", type=int, default=1000, help="as omnidit eval --seed")
    ap.add_argument("--size", type=int, default=64, help="as omnidit eval --size")
    ap.add_argument("--cache", default="runs/decoder_check", help="folder keeping the sampled latents")
    ap.add_argument("--json", default=None, help="also write {vae: {images|videos: scores}} here")
    args = ap.parse_args()
    torch.set_grad_enabled(False)

    model_dir = resolve_model(args.model)
    pipe = None
    sets = {}
    for kind, prompts, frames in eval_sets(args.n, args.videos, args.seed):
        n = len(prompts)
        path = Path(args.cache) / f"{model_dir.name}-{kind}-{n}-{args.seed}-{args.size}.pt"
        if path.is_file():
            latents = torch.load(path)
        else:
            pipe = pipe or Pipeline.from_pretrained(model_dir, device="cpu")
            print(f"sampling {n} {kind} with {args.model} (once; kept in {path})", file=sys.stderr)
            latents = eval_latents(pipe, prompts, frames=frames, seed=args.seed, size=args.size)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(latents, path)
        sets[kind] = (prompts, latents)

    print(f"{args.model}'s eval latents (seed {args.seed}) decoded by:")
    print(f"{'':8s} {'vae':40s} " + " ".join(f"{a:>10s}" for a in ATTRS))
    results: dict[str, dict] = {}
    for vae_dir in [str(model_dir / "vae"), *args.vae]:
        vae = VideoVAE.from_pretrained(vae_dir, device="cpu")
        for kind, (prompts, latents) in sets.items():
            frames = decode_all(vae, latents)
            s = results.setdefault(vae_dir, {})[kind] = score_decoder(frames, prompts)
            cells = " ".join(f"{s[a]:10.1%}" if a in s else f"{'-':>10s}" for a in ATTRS)
            print(f"{kind:8s} {vae_dir[-40:]:40s} {cells}")
            if kind == "images":
                reads = small_shape_reads(frames, prompts)
                print(f"{'':8s} small squares read as {dict(reads['square'])}, small triangles as "
                      f"{dict(reads['triangle'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
