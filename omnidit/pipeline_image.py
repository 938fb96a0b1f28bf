"""Start images of a HunyuanVideo-1.0-family Pipeline: checked, fitted to the request, encoded, and held
as the video's first latent frame by the training-free condition of sampling/first_frame.py.

`Pipeline.generate(..., image=...)` takes one image (a PIL image, an array [H, W, 3] or a path;
omnidit/tokenizers/image_input.load_image) for every prompt, or `generate_many(..., image=[...])`
one entry per prompt, None for a prompt without one. An image needs a video: frames=1 with an
image is refused (the output would be the image itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from omnidit.request import RequestError
from omnidit.sampling.first_frame import condition_first_frame
from omnidit.tokenizers.image_input import fit_image, image_to_video, load_image

FIELD = "image"


@dataclass(frozen=True)
class StartImages:
    """What `Pipeline.check_image` returns for a 1.0-family model: RGB PIL images, one per prompt
    (`per_prompt`), or one for every prompt."""

    images: tuple  # RGB PIL images or None
    per_prompt: bool

    def for_batch(self, n: int) -> list:
        """One entry (a PIL image or None) per sample of a batch of `n`."""
        if not self.per_prompt:
            return list(self.images) * n
        if len(self.images) != n:
            raise RequestError(
                FIELD,
                f"{FIELD} has {len(self.images)} entries for {n} prompts "
                "(give one image for all, or one entry per prompt, None for none)",
            )
        return list(self.images)


def check_images(image) -> StartImages | None:
    """One image, or a list/tuple with one entry (an image or None) per prompt -> StartImages (None: none)."""
    if image is None or isinstance(image, StartImages):  # None, or checked already
        return image
    if isinstance(image, (list, tuple)):
        if not image:
            raise RequestError(
                FIELD,
                f"{FIELD} list is empty (give one entry per prompt, None for none)",
            )
        loaded = tuple(None if im is None else load_image(im, FIELD) for im in image)
        return (
            None
            if all(im is None for im in loaded)
            else StartImages(loaded, per_prompt=True)
        )
    return StartImages((load_image(image, FIELD),), per_prompt=False)


def check_request(images, frames: int, n: int) -> None:
    """Refuse what cannot run before any work: a start image for a one-frame output, a wrong count."""
    if not isinstance(images, StartImages):
        return
    images.for_batch(n)
    if frames == 1:
        raise RequestError(
            FIELD,
            f"{FIELD} is the first frame of a video: ask for frames > 1 "
            "(frames=1 would return the image itself)",
        )


@torch.no_grad()
def encode_start(
    vae, images: list, height: int, width: int, device: torch.device, axis=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (PIL or None, one per sample) -> (latents `[B, C, 1, H', W']` fp32, zeros where None;
    mask `[B]` bool). Each image is fitted (scaled to cover, centre-cropped) and encoded alone as a
    one-frame video (the posterior mean), so its latent does not depend on the batch. `axis`: the
    processes a tiled encode splits across (`Pipeline.vae_axis`)."""
    c, _, h, w = vae.latent_shape(1, height, width)
    latent = torch.zeros(
        len(images), c, 1, h, w, dtype=torch.float32, device=device
    )  # [B, C, 1, H', W']
    mask = torch.tensor([im is not None for im in images], dtype=torch.bool)
    for i, im in enumerate(images):
        if im is not None:
            latent[i] = (
                vae.encode(image_to_video(fit_image(im, height, width)), axis=axis)[0]
                .float()
                .to(device)
            )
    return latent, mask


def first_frame(pipe, model_fn, latents: torch.Tensor, req, images):
    """`model_fn` with the first latent frame held to the start images (unchanged without any);
    `latents` are the initial noise `[B, C, F', H', W']`, whose first frame re-noises each image."""
    if not isinstance(images, StartImages):
        return model_fn
    latent, mask = encode_start(
        pipe.vae,
        images.for_batch(latents.shape[0]),
        req.height,
        req.width,
        latents.device,
        axis=pipe.vae_axis,
    )
    return condition_first_frame(model_fn, latent, latents[:, :, :1].float(), mask)
