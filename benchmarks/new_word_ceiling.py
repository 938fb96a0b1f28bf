"""What a DiT-only adapter can reach on a new word: the evaluator on the model's own VAE
reconstructions of ground-truth scenes (`omnidit eval --word`'s prompts), beside the base grammar's.

    python benchmarks/new_word_ceiling.py --model shapes --word cross --n 200 [--vae DIR]

A LoRA changes only the DiT, which learns to produce the encoder's latents; what the decoder makes
of those latents bounds the adherence any adapter can show. Per-size shape rows show where it is lost.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np
import torch


def main() -> None:
    from omnidit.model_folder import resolve_model
    from omnidit.shapes import parse_prompt, render_batch, score
    from omnidit.shapes.adherence import eval_prompts
    from omnidit.shapes.spec import NEW_SHAPES
    from omnidit.tokenizers import VideoVAE
    from omnidit.tokenizers.vae import frames_to_uint8
    from omnidit.training.vae_train import to_video_tensor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--word", choices=NEW_SHAPES, default="cross")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1000, help="omnidit eval's prompt seed")
    ap.add_argument("--vae", default=None, help="another VAE folder (a fine-tuned decoder); default: the model's")
    args = ap.parse_args()
    vae = VideoVAE.from_pretrained(args.vae or resolve_model(args.model) / "vae")
    for label, word in ((f"--word {args.word}", args.word), ("base grammar", None)):
        prompts = eval_prompts(args.n, seed=args.seed, video=False, word=word)
        specs = [parse_prompt(p) for p in prompts]
        frames = render_batch(specs)  # [N, 1, 64, 64, 3] ground truth
        with torch.no_grad():
            recon = np.concatenate([frames_to_uint8(vae.decode(vae.encode(to_video_tensor(frames[i:i + 50])))).numpy()
                                    for i in range(0, len(frames), 50)])
        totals, by_size = defaultdict(list), defaultdict(list)
        for f, s in zip(recon, specs):
            r = score(f, s)
            for k, v in r.items():
                if v is not None:
                    totals[k].append(v)
            if word:
                by_size[s.objects[0].size].append(r["shape"])
        row = "  ".join(f"{k} {100 * np.mean(v):.1f}%" for k, v in sorted(totals.items()))
        print(f"{label:14s} n={len(prompts)}  {row}")
        for size, v in sorted(by_size.items()):
            print(f"{'':14s} shape of {size} {args.word}es: {100 * np.mean(v):.1f}% (n={len(v)})")


if __name__ == "__main__":
    main()
