"""Shapes-world training data rendered on the fly, for machines where rendering is cheaper than
storing a cache (a GPU box with many cores): every batch is a fresh scene, so the model never
sees the same prompt-and-noise pair twice.

`stream_batches` renders `(prompts, uint8 frames)` in DataLoader workers; `OnlineLatents`
turns those into what the DiT trains on (VAE latents + text embeddings) on the training device,
with the same `batch(gen, b)` / `refresh()` interface as `LatentCache`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


class ShapesStream(IterableDataset):
    """Endless batches of random scenes; worker w of a run started at `start` draws from its own
    seeded generator, so runs are reproducible and a resumed run does not replay old batches.
    `word` (one of spec.NEW_SHAPES) puts a new word in a `p_word` share of each batch."""

    def __init__(self, batch: int, *, frames: int, size: int, seed: int, start: int = 0,
                 word: str | None = None, p_word: float = 0.0):
        self.batch, self.frames, self.size, self.seed, self.start = batch, frames, size, seed, start
        self.word, self.p_word = word, p_word

    def __iter__(self) -> Iterator[tuple[list[str], torch.Tensor]]:
        from omnidit.shapes.world import mixed_batch

        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.frames, self.start, info.id if info else 0])
        while True:
            prompts, frames = mixed_batch(rng, self.batch, frames=self.frames, size=self.size,
                                          word=self.word, p_word=self.p_word)
            yield prompts, torch.from_numpy(frames)  # uint8 [B, F, H, W, 3]


def stream_batches(batch: int, *, frames: int, size: int = 64, seed: int = 0, start: int = 0,
                   workers: int = 4, word: str | None = None,
                   p_word: float = 0.0) -> Iterator[tuple[list[str], torch.Tensor]]:
    """An iterator of rendered batches, `workers` processes rendering ahead (0 = in this process)."""
    ds = ShapesStream(batch, frames=frames, size=size, seed=seed, start=start, word=word, p_word=p_word)
    if workers == 0:
        return iter(ds)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, prefetch_factor=4,
                        persistent_workers=True, pin_memory=torch.cuda.is_available())
    return iter(loader)


class OnlineLatents:
    """Rendered batches -> (latents, text states, mask, pooled) on `device`, encoded as they come."""

    def __init__(self, vae_dir: Path, text_encoder, *, batch: int, frames: int, device: torch.device,
                 size: int = 64, seed: int = 0, start: int = 0, workers: int = 4):
        from omnidit.tokenizers import VideoVAE

        self.vae = VideoVAE.from_pretrained(vae_dir, device=device)
        self.text_encoder, self.device, self.batch_size = text_encoder, device, batch
        self.frames = frames
        self.it = stream_batches(batch, frames=frames, size=size, seed=seed, start=start, workers=workers)

    @torch.no_grad()
    def batch(self, gen: torch.Generator, b: int):
        """The next rendered batch, encoded; `b` must be the stream's batch size (`gen` is unused:
        the workers' own generators draw the scenes)."""
        from omnidit.training.vae_train import to_video_tensor

        if b != self.batch_size:
            raise ValueError(f"this stream renders batches of {self.batch_size}, asked for {b}")
        prompts, frames = next(self.it)
        x = to_video_tensor(frames.to(self.device, non_blocking=True))  # [B, 3, F, H, W]
        latents = self.vae.encode(x)  # [B, C, F', H', W'], posterior mean (as the cache stores)
        emb = self.text_encoder.encode(prompts, device=self.device)
        return latents, emb.hidden_states, emb.attention_mask, emb.pooled

    def refresh(self) -> int:
        return 0  # nothing to pick up: every batch is new

    def __len__(self) -> int:
        return self.batch_size  # non-empty; the stream itself never ends
