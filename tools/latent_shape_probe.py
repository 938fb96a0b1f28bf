"""Do a VAE's latents know an object's shape? A small MLP probe, to tell encoder from decoder limits.

    python tools/latent_shape_probe.py --vae omnidit/models/shapes/vae

Encodes rendered single-object images, takes the 3x3 latent patch around each object's centre
and trains an MLP to name its shape (circle / square / triangle) on 5,000 of them, then scores
the held-out rest by size. If the probe reads shapes far better than the evaluator reads the
decoder's reconstructions, the decoder (not the latent space) is what loses them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = ("circle", "square", "triangle")


@torch.no_grad()
def latent_patches(vae_dir: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    from omnidit.shapes import sample_spec
    from omnidit.shapes.render import render_batch
    from omnidit.tokenizers import VideoVAE
    from omnidit.training.vae_train import to_video_tensor

    vae = VideoVAE.from_pretrained(vae_dir, dtype=torch.float32, device="cpu")
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, video=False, max_objects=1) for _ in range(n)]
    feats = []
    for i in range(0, n, 200):
        chunk = specs[i:i + 200]
        z = vae.encode(to_video_tensor(render_batch(chunk, frames=1, size=64)))[:, :, 0]  # [b, C, h, w]
        h, w = z.shape[-2:]
        z = F.pad(z, (1, 1, 1, 1))
        for s, zz in zip(chunk, z):
            cx = min(w - 1, int(s.objects[0].center[0] * w))
            cy = min(h - 1, int(s.objects[0].center[1] * h))
            feats.append(zz[:, cy:cy + 3, cx:cx + 3].reshape(-1))  # the 3x3 cells around the centre
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="omnidit/models/shapes/vae")
    ap.add_argument("--n", type=int, default=6000)
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    x, y, size = latent_patches(args.vae, args.n, args.seed)
    k = args.train
    mlp = train_probe(x[:k], y[:k], args.steps)
    with torch.no_grad():
        right = (mlp(x[k:]).argmax(1) == y[k:]).numpy()
    by_size = {s: f"{right[size[k:] == s].mean():.1%}" for s in ("small", "medium", "large")}
    print(f"shape from latents: {right.mean():.1%} of {len(right)} held-out objects; by size {by_size}")


if __name__ == "__main__":
    main()
