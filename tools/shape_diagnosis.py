"""Where does a model lose shapes: in the DiT's latents or in the VAE's decoder?

    python tools/shape_diagnosis.py --model shapes [--vae DIR] [--n 160] [--max-objects 1]

For `--n` scenes (one object each by default) it reads each object's shape four ways, split by
size: the evaluator on the VAE's reconstruction of the rendered scene (`rec`), the evaluator on the
model's image for the scene's prompt (`gen`), and a latent probe (an MLP trained on the encoder's
3x3 latent patches around objects, `tools/latent_shape_probe.py`) on the encoded scene (`probe_enc`)
and on the model's own generated latents at the object it drew (`probe_gen`). If `probe_gen` is
high and `gen` low, the DiT put the shape into its latents and the decoder did not draw it.
`--vae` swaps in another decoder (same latent space) for `rec` and `gen`.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latent_shape_probe import SHAPES, latent_patches, train_probe  # noqa: E402

SIZES = ("small", "medium", "large")


def patch_at(z: torch.Tensor, cx: float, cy: float) -> torch.Tensor:
    """The 3x3 latent cells around normalised (cx, cy) of one latent frame `[C, h, w]`, flattened."""
    h, w = z.shape[-2:]
    z = F.pad(z, (1, 1, 1, 1))
    i, j = min(h - 1, int(cy * h)), min(w - 1, int(cx * w))
    return z[:, i:i + 3, j:j + 3].reshape(-1)


def main() -> None:
    from omnidit.pipeline import Pipeline, resolve_model
    from omnidit.shapes import detect, sample_spec
    from omnidit.shapes.grammar import prompt_for
    from omnidit.shapes.render import render_batch
    from omnidit.tokenizers import VideoVAE, frames_to_uint8
    from omnidit.training.vae_train import to_video_tensor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="shapes")
    ap.add_argument("--vae", default=None, help="decode with this VAE instead of the model's (same latent space)")
    ap.add_argument("--n", type=int, default=160)
    ap.add_argument("--max-objects", type=int, choices=(1, 2), default=1)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--probe-n", type=int, default=5000, help="encoded scenes the latent probe trains on")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)

    model_vae = str(resolve_model(args.model) / "vae")
    with torch.enable_grad():
        probe = train_probe(*latent_patches(model_vae, args.probe_n, 11)[:2], steps=400)
    pipe = Pipeline.from_pretrained(args.model)
    if args.vae:
        pipe.vae = VideoVAE.from_pretrained(args.vae, dtype=torch.float32, device="cpu")
    encoder = VideoVAE.from_pretrained(model_vae, dtype=torch.float32, device="cpu")

    rng = np.random.default_rng(args.seed)
    specs = [sample_spec(rng, video=False, max_objects=args.max_objects) for _ in range(args.n)]
    specs = [s for s in specs if len({o.colour for o in s.objects}) == len(s.objects)]  # colour names the object
    truth = render_batch(specs, frames=1, size=64)
    z_enc = encoder.encode(to_video_tensor(truth))  # [B, C, 1, h, w]
    rec = frames_to_uint8(pipe.vae.decode(z_enc)).numpy()
    latents: list[torch.Tensor] = []
    decode = pipe.decode
    pipe.decode = lambda z: (latents.append(z.cpu()), decode(z))[1]
    prompts = [prompt_for(s, paraphrase=False) for s in specs]
    gen = []
    for i in range(0, len(prompts), 8):
        gen += [g.frames for g in pipe.generate_many(prompts[i:i + 8], seeds=list(range(i, i + len(prompts[i:i + 8]))))]
    z_gen = torch.cat(latents)

    seen = {k: Counter() for k in ("rec", "gen", "probe_enc", "probe_gen")}  # ((shape, size), read) -> count
    for i, spec in enumerate(specs):
        found = {name: detect(frames)[1] for name, frames in (("rec", rec[i]), ("gen", gen[i]))}
        for o in spec.objects:
            key = (o.shape, o.size)
            for name, blobs in found.items():
                mine = [b for b in blobs if b.colour == o.colour]
                seen[name][key, max(mine, key=lambda b: b.area).shape if mine else "missing"] += 1
                if name == "gen" and mine:
                    b = max(mine, key=lambda b: b.area)
                    seen["probe_gen"][key, SHAPES[int(probe(patch_at(z_gen[i, :, 0], b.bx, b.by)[None]).argmax())]] += 1
            seen["probe_enc"][key, SHAPES[int(probe(patch_at(z_enc[i, :, 0], *o.center)[None]).argmax())]] += 1

    print(f"{args.model}{' + ' + args.vae if args.vae else ''}: {len(specs)} scenes, up to {args.max_objects} objects")
    print(f"{'':10s} {'all':>6s} " + " ".join(f"{s:>7s}" for s in SIZES) + "   small objects read as")
    for name, c in seen.items():
        def acc(pred) -> str:
            hits = [v for (k, p), v in c.items() if pred(k) and p == k[0]]
            total = sum(v for (k, _), v in c.items() if pred(k))
            return f"{sum(hits) / total:7.1%}" if total else "      -"
        small = Counter()
        for (k, p), v in c.items():
            if k[1] == "small" and k[0] != "circle":
                small[p] += v
        print(f"{name:10s} {acc(lambda k: True):>6s} " + " ".join(acc(lambda k, s=s: k[1] == s) for s in SIZES)
              + f"   squares+triangles -> {dict(small)}")


if __name__ == "__main__":
    main()
