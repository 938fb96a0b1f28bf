"""Pre-encode a shapes-world data set once: VAE latents and text embeddings, so DiT training
spends its CPU on the DiT alone. Built in chunks, so an interrupted build resumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

CHUNK = 256


@torch.no_grad()
def build_cache(vae_dir: Path, out_dir: Path, *, n: int, frames: int, size: int = 64, seed: int = 0,
                text_encoder=None) -> Path:
    """Write `out_dir/chunk_XXXX.pt` files of `CHUNK` samples each; skip chunks already there."""
    from omnidit.shapes.world import random_batch
    from omnidit.tokenizers import VideoVAE, load_text_encoder
    from omnidit.training.vae_train import to_video_tensor

    out_dir.mkdir(parents=True, exist_ok=True)
    vae = VideoVAE.from_pretrained(vae_dir)
    text_encoder = text_encoder or load_text_encoder({"kind": "sentence"})
    n_chunks = (n + CHUNK - 1) // CHUNK
    for c in tqdm(range(n_chunks), desc=f"cache {frames}f", unit="chunk"):
        path = out_dir / f"chunk_{c:04d}.pt"
        if path.is_file():
            continue
        # Every chunk has its own seed: a resumed build makes the same data as an unbroken one.
        rng = np.random.default_rng([seed, frames, c])
        prompts, video, _ = random_batch(rng, CHUNK, frames=frames, size=size)
        lat = torch.cat([vae.encode(to_video_tensor(video[i:i + 32])) for i in range(0, CHUNK, 32)])
        emb = text_encoder.encode(prompts)
        tmp = path.with_suffix(".tmp")
        torch.save({
            "latents": lat.half(), "text": emb.hidden_states.half(), "mask": emb.attention_mask.to(torch.int8),
            "pooled": emb.pooled.half(), "prompts": prompts,
        }, tmp)
        tmp.replace(path)
    return out_dir


class LatentCache:
    """All chunks of one cache folder in memory; `batch(rng, b)` draws a random batch.

    `refresh()` picks up chunks written since, so training can start while a slow part of the
    cache (videos) is still being built beside it.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.loaded: set[str] = set()
        self.latents = self.text = self.mask = self.pooled = None
        self.prompts: list[str] = []
        self.refresh()

    def refresh(self) -> int:
        """Load new chunks; return how many samples were added."""
        new = [p for p in sorted(self.folder.glob("chunk_*.pt")) if p.name not in self.loaded]
        chunks = [torch.load(p, weights_only=False) for p in new]
        if not chunks:
            return 0
        self.loaded.update(p.name for p in new)

        def cat(old, key):
            parts = ([old] if old is not None else []) + [c[key] for c in chunks]
            return torch.cat(parts)

        self.latents, self.text = cat(self.latents, "latents"), cat(self.text, "text")
        self.mask, self.pooled = cat(self.mask, "mask"), cat(self.pooled, "pooled")
        self.prompts += [p for c in chunks for p in c["prompts"]]
        return sum(len(c["prompts"]) for c in chunks)

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(self, gen: torch.Generator, b: int):
        idx = torch.randint(0, len(self), (b,), generator=gen)
        return (self.latents[idx].float(), self.text[idx].float(), self.mask[idx].long(),
                self.pooled[idx].float())
