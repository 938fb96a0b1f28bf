"""Where does a model lose shapes: in the DiT's latents or in the VAE's decoder?

    python experiments/shape_diagnosis.py --model shapes [--vae DIR] [--n 160] [--max-objects 1]
    python experiments/shape_diagnosis.py --model shapes --probe-only   # the latent probe alone

The latent probe is an MLP trained on the model encoder's 3x3 latent patches around the centres
of rendered single objects, naming their shape (circle / square / triangle).

`--probe-only`: trains it on `--probe-n` encoded objects (seed 11) and scores it on 1,000 more,
by size. If the probe reads shapes far better than the evaluator reads the decoder's
reconstructions, the decoder (not the latent space) is what loses them.

Otherwise, for `--n` scenes (one object each by default) it reads each object's shape four ways,
split by size: the evaluator on the VAE's reconstruction of the rendered scene (`rec`), the
evaluator on the model's image for the scene's prompt (`gen`), and the latent probe on the
encoded scene (`probe_enc`) and on the model's own generated latents at the object it drew
(`probe_gen`). If `probe_gen` is high and `gen` low, the DiT put the shape into its latents and
the decoder did not draw it. `--vae` swaps in another decoder (same latent space) for `rec` and
`gen`.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "medium", "large")
PROBE_SEED = 11  # the encoded scenes the probe trains on
PROBE_HELD_OUT = 1000  # --probe-only: objects it is scored on


@torch.no_grad()
def latent_patches(vae, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Flattened 3x3 latent patches around `n` rendered single objects' centres, as encoded by
    `vae` (a VideoVAE), their shape indices and their sizes."""
    from omnidit.shapes import sample_spec
    from omnidit.shapes.render import render_batch
    from omnidit.training.vae_train import to_video_tensor

    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, video=False, max_objects=1) for _ in range(n)]
    feats = []
    for i in range(0, n, 200):
        chunk = specs[i:i + 200]
        z = vae.encode(to_video_tensor(render_batch(chunk, frames=1, size=64)))[:, :, 0]  # [b, C, h, w]
        feats += [patch_at(zz, *s.objects[0].center) for s, zz in zip(chunk, z)]
    labels = torch.tensor([SHAPES.index(s.objects[0].shape) for s in specs])
    return torch.stack(feats), labels, np.array([s.objects[0].size for s in specs])


def train_probe(x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.nn.Module:
    """An MLP from flattened latent patches `x` to shape indices `y` (Adam, batches of 256)."""
    mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.GELU(), torch.nn.Linear(256, len(SHAPES)))
    opt = torch.optim.Adam(mlp.parameters(), 1e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,))
        loss = F.cross_entropy(mlp(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mlp.eval()


def patch_at(z: torch.Tensor, cx: float, cy: float) -> torch.Tensor:
    """The 3x3 latent cells around normalised (cx, cy) of one latent frame `[C, h, w]`, flattened."""
    h, w = z.shape[-2:]
    z = F.pad(z, (1, 1, 1, 1))
    i, j = min(h - 1, int(cy * h)), min(w - 1, int(cx * w))
    return z[:, i:i + 3, j:j + 3].reshape(-1)


def probe_only(vae, n_train: int) -> None:
    """The probe alone: trained on `n_train` objects encoded by `vae`, scored on PROBE_HELD_OUT more."""
    torch.manual_seed(PROBE_SEED)
    x, y, size = latent_patches(vae, n_train + PROBE_HELD_OUT, PROBE_SEED)
    mlp = train_probe(x[:n_train], y[:n_train], steps=300)
    with torch.no_grad():
        right = (mlp(x[n_train:]).argmax(1) == y[n_train:]).numpy()
    by_size = {s: f"{right[size[n_train:] == s].mean():.1%}" for s in SIZES}
    print(f"shape from latents: {right.mean():.1%} of {len(right)} held-out objects; by size {by_size}")


def main() -> None:
    from omnidit import Pipeline
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
    ap.add_argument("--probe-only", action="store_true", help="only train and score the latent probe")
    args = ap.parse_args()

    if args.probe_only:
        probe_only(Pipeline.from_pretrained(args.model, device="cpu").vae, args.probe_n)
        return
    pipe = Pipeline.from_pretrained(args.model)
    # The model's own encoder, on the CPU (loading consumes no random numbers: the seeds below hold).
    encoder = pipe.vae if pipe.device.type == "cpu" else Pipeline.from_pretrained(args.model, device="cpu").vae
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    with torch.enable_grad():
        probe = train_probe(*latent_patches(encoder, args.probe_n, PROBE_SEED)[:2], steps=400)
    if args.vae:
        pipe.vae = VideoVAE.from_pretrained(args.vae, dtype=torch.float32, device="cpu")

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
