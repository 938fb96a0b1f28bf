"""HunyuanVideo-1.5 in the Pipeline: its text encoders, its conditioning channels and its image input.

What differs from the base Pipeline (which samples, guides and decodes the same way):
- text: Qwen2.5-VL states plus ByT5 glyph tokens (tokenizers/text_hv15.py), a 5-tensor text tuple;
- the DiT input: the noisy latents [B, C, F', H', W'] with a condition latent [B, C, ...] and a mask
  channel [B, 1, ...] concatenated (2C + 1 channels), plus SigLIP image tokens `image_embeds`:
  text-to-video: condition, mask and image tokens all zero;
  image-to-video: the start image fitted to the request's size, VAE-encoded as the first latent frame
  (mask 1 there, later frames 0), and SigLIP's states of the same fitted image;
- MeanFlow (`use_meanflow`, the step-distilled variants): each step also gets `timestep_r`, the
  timestep where the step ends (the next one on the schedule, 0 for the last);
- sizes: without one, a request takes the size bucket of the transformer's `target_size` nearest
  16:9 (text-to-video) or the start image's aspect (image-to-video), as diffusers' pipelines do.
Defaults (shift, CFG scale) are the folder's own (pipeline_config.read_hv15_pipeline_config).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from omnidit.pipeline import Pipeline, _Request
from omnidit.pipeline_config import bucket_for
from omnidit.request import RequestError
from omnidit.sampling.flow import timesteps_from_sigmas

TASKS = ("t2v", "i2v")
I2V_PIPELINE = "HunyuanVideo15ImageToVideoPipeline"


@dataclass(frozen=True)
class HV15Settings:
    task: str  # "t2v" | "i2v": whether requests take a start image
    target_size: int  # pixels of the size buckets' side at 1:1
    size_multiple: int  # VAE spatial ratio x patch size
    image_embed_dim: int  # SigLIP state width the DiT projects
    meanflow: bool = False  # the DiT takes `timestep_r`
    image_tokens: int = 729  # SigLIP-so400m's 27 x 27 patches: the zero image tokens of text-to-video

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")

    @classmethod
    def from_folder(cls, folder) -> HV15Settings:
        cfg = json.loads((folder.transformer_dir / "config.json").read_text())
        vae = json.loads((folder.vae_dir / "config.json").read_text())
        i2v = folder.index.get("_class_name") == I2V_PIPELINE or (folder.path / "image_encoder").is_dir()
        return cls(task="i2v" if i2v else "t2v", target_size=int(cfg.get("target_size", 640)),
                   size_multiple=int(vae.get("spatial_compression_ratio", 16)) * int(cfg.get("patch_size", 1)),
                   image_embed_dim=int(cfg.get("image_embed_dim", 1152)), meanflow=bool(cfg.get("use_meanflow")))


class ConditionedForward:
    """The Denoiser's forward `(x, t, states, mask, pooled, states_2, mask_2) -> v` for HunyuanVideo-1.5:
    adds the condition channels, the image tokens and (MeanFlow) `timestep_r`, then calls the DiT
    `forward` with HunyuanVideo15Transformer3DModel's keyword arguments. The condition is one per
    request, expanded to whatever rows a call carries (cond | uncond, or a CFG-parallel rank's share)."""

    def __init__(self, forward, cond: torch.Tensor, image_embeds: torch.Tensor, sigmas: torch.Tensor | None):
        self.forward = forward
        self.cond = cond  # [1, C + 1, F', H', W']: condition latent, then the mask channel
        self.image_embeds = image_embeds  # [1, N, D]
        self.timesteps = None if sigmas is None else timesteps_from_sigmas(sigmas).float()  # [S + 1], ends at 0

    def timestep_r(self, t: torch.Tensor) -> torch.Tensor:
        """The schedule's next timestep after `t` (all rows share one step): where a MeanFlow step lands."""
        hit = (self.timesteps[:-1] == t[0].float()).nonzero()
        if hit.numel() == 0:
            raise ValueError("a MeanFlow model samples on its schedule's steps (sampler 'euler'); got a timestep "
                             f"{float(t[0])} that is not one of them")
        return self.timesteps[int(hit[0]) + 1].expand(t.shape[0])  # [B]

    def __call__(self, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                 pooled: torch.Tensor, states_2: torch.Tensor, mask_2: torch.Tensor, **kw) -> torch.Tensor:
        b, dtype = x.shape[0], x.dtype
        x_in = torch.cat([x, self.cond.to(x).expand(b, -1, -1, -1, -1)], dim=1)  # [B, 2C + 1, F', H', W']
        if self.timesteps is not None:
            kw["timestep_r"] = self.timestep_r(t).to(dtype)
        return self.forward(x_in, t.to(dtype), states, mask, encoder_hidden_states_2=states_2,
                            encoder_attention_mask_2=mask_2,
                            image_embeds=self.image_embeds.to(x).expand(b, -1, -1), **kw)  # [B, C, F', H', W']


class HunyuanVideo15Pipeline(Pipeline):
    """A HunyuanVideo-1.5 folder (T2V or I2V, base, CFG-distilled or step-distilled) as a Pipeline."""

    def __init__(self, dit, vae, text_encoder, config, *, settings: HV15Settings, image_encoder=None, **kwargs):
        if settings.task == "i2v" and image_encoder is None:
            raise ValueError("an image-to-video HunyuanVideo-1.5 pipeline needs its image encoder")
        super().__init__(dit, vae, text_encoder, config, **kwargs)
        self.settings = settings
        self.image_encoder = image_encoder

    @classmethod
    def load(cls, folder, *, device: torch.device, dtype: torch.dtype, parallel=None, weights: str | None = None,
             offload: str = "none") -> HunyuanVideo15Pipeline:
        """Build from an opened model folder (model_folder.ModelFolder); `Pipeline.from_pretrained` calls this
        (`weights`, `offload`: pipeline_memory.py; under offload the encoders and VAE load on the host)."""
        from omnidit.pipeline_memory import component_device, load_dit
        from omnidit.tokenizers import VideoVAE
        from omnidit.tokenizers.image_encoder import SiglipImageEncoder
        from omnidit.tokenizers.text_hv15 import HunyuanVideo15TextEncoder

        settings = HV15Settings.from_folder(folder)
        dit = load_dit(folder.transformer_dir, device=device, dtype=dtype, weights=weights, offload=offload)
        where = component_device(device, offload)
        vae = VideoVAE.from_pretrained(folder.vae_dir, dtype=dtype, device=where)
        text = HunyuanVideo15TextEncoder.from_pipeline_dir(folder.path, dtype=dtype, device=where)
        image_encoder = None
        if settings.task == "i2v":
            image_encoder = SiglipImageEncoder.from_pipeline_dir(folder.path, dtype=dtype, device=device)
        pipe = cls(dit, vae, text, folder.sampling(), settings=settings, image_encoder=image_encoder,
                   name=folder.name, parallel=parallel, cache_calibration=folder.cache_calibration)
        pipe.offload = offload
        return pipe

    # ---- the start image ------------------------------------------------------------------

    @property
    def takes_image(self) -> bool:
        return self.settings.task == "i2v"

    @property
    def needs_image(self) -> bool:
        return self.settings.task == "i2v"

    def check_image(self, image):
        """The start image as an RGB PIL image (image-to-video needs one; text-to-video takes none)."""
        from omnidit.tokenizers.image_input import load_image

        if not self.takes_image:
            return super().check_image(image)
        if image is None:
            raise self._no_image()
        return load_image(image)

    def check(self, *, image=None, **kwargs):
        """As Pipeline.check; an image-to-video model also refuses a request without its start image
        (the CLI and the service validate through here before any work)."""
        if self.takes_image and image is None:
            raise self._no_image()
        return super().check(image=image, **kwargs)

    def _no_image(self) -> RequestError:
        return RequestError("image", f"model {self.name!r} is image-to-video: pass a start image "
                                     "(a PIL image, an array [H, W, 3] or a path; --image on the CLI)")

    def default_size(self, image=None) -> tuple[int, int]:
        if image is None:
            return super().default_size()
        return bucket_for(image.height, image.width, self.settings.target_size, self.settings.size_multiple)

    # ---- the DiT's extra inputs -----------------------------------------------------------

    def conditioned_forward(self, forward, req: _Request, image, sigmas: torch.Tensor) -> ConditionedForward:
        c, f, h, w = self.vae.latent_shape(req.frames, req.height, req.width)
        cond = torch.zeros(1, c + 1, f, h, w, device=self.device, dtype=torch.float32)  # [1, C + 1, F', H', W']
        if image is None:
            embeds = torch.zeros(1, self.settings.image_tokens, self.settings.image_embed_dim, device=self.device)
        else:
            latent, embeds = self.encode_image(image, req.height, req.width)
            cond[:, :c, :1] = latent  # the start image is the first latent frame
            cond[:, c, 0] = 1.0  # and the mask says so
        return ConditionedForward(forward, cond, embeds, sigmas if self.settings.meanflow else None)

    @torch.no_grad()
    def encode_image(self, image, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A start image -> (its latent [1, C, 1, H', W'] scaled, SigLIP states [1, N, D]) of the image
        fitted (scaled to cover, centre-cropped) to height x width."""
        from omnidit.tokenizers.image_input import fit_image, image_to_video

        fitted = fit_image(image, height, width)
        from omnidit.pipeline_memory import on_device

        with on_device(self.vae, self.device, self.offload):
            latent = self.vae.encode(image_to_video(fitted), axis=self.vae_axis)  # [1, C, 1, H', W'], the mean
        return latent.to(self.device), self.image_encoder.encode(fitted).to(self.device)
