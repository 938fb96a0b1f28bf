"""DiT: the HunyuanVideo transformer, weight-compatible with diffusers' HunyuanVideoTransformer3DModel
and (config `family="hunyuanvideo15"`) HunyuanVideo15Transformer3DModel.

Data flow (B batch, N video tokens, L text tokens, S = N + L, D model width):

    video [B, C, T, H, W] --patchify--> img [B, N, D]
    text [B, L, Dt] --token refiner--> txt [B, L, D]          timestep/guidance/pooled --> temb [B, D]
      1.5: txt = [image tokens | glyph tokens | text], per sample (hv15.py); temb from the timestep(s)
    dual-stream blocks:   (img, txt) -> (img, txt), joint attention over [img | txt]
    single-stream blocks: x = [img | txt] -> x   (1.0 only)
    final adaLN + linear on the video tokens --unpatchify--> [B, C_out, T, H, W]

Padded text: diffusers only ever masks padded text as attention *keys*, and video outputs never
depend on padded rows, so we drop the text tail no sample uses and give the attention a
`JointLayout` (per-sample text lengths) instead of a dense mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from omnidit.dit import hv15
from omnidit.dit.attention import AttentionBackend, JointAttentionFn, JointLayout, get_backend, joint_attention
from omnidit.dit.blocks import (
    DualStreamBlock,
    FinalLayer,
    Modulation,
    RefinerBlock,
    RMSNorm,
    SingleStreamBlock,
    TokenRefiner,
)
from omnidit.dit.cache import RowReduce, StepCache
from omnidit.dit.config import HV15, DiTConfig
from omnidit.dit.embeddings import (
    ConditionEmbedding,
    PatchEmbed,
    rope_3d,
    rope_with_text_identity,
    unpatchify,
)


class Embedded(NamedTuple):
    """What `DiT.embed` hands to the blocks (B batch, N video tokens, L text tokens, D width)."""

    img: torch.Tensor  # [B, N, D] video tokens
    txt: torch.Tensor  # [B, L, D] refined text, trimmed to the longest sample
    temb: torch.Tensor  # [B, D] conditioning vector
    rope: torch.Tensor  # [N, Dh/2] complex rotary table of the video tokens
    layout: JointLayout
    grid: tuple[int, int, int]  # (T, H, W) in patches


class DiT(nn.Module):
    """The HunyuanVideo (1.0 or 1.5) transformer; `forward` maps noisy latents + text to the flow prediction."""

    def __init__(self, config: DiTConfig, *, attention_backend: str | None = None):
        super().__init__()
        self.config = config
        D, heads, c = config.inner_dim, config.num_attention_heads, config
        self.patch = (c.patch_size_t, c.patch_size, c.patch_size)
        self.x_embedder = PatchEmbed(self.patch, c.in_channels, D)
        self.context_embedder = TokenRefiner(c.text_embed_dim, D, heads, c.num_refiner_layers,
                                             first_key=c.family != HV15)
        if c.family == HV15:  # diffusers' names, so its state dicts load as they are
            self.image_embedder = hv15.ImageProjection(c.image_embed_dim, D)
            self.context_embedder_2 = hv15.GlyphProjection(c.text_embed_2_dim, D)
            self.time_embed = hv15.TimeEmbedding(D, c.use_meanflow)
            self.cond_type_embed = nn.Embedding(3, D)  # rows: text, glyph, image (hv15.TEXT, GLYPH, IMAGE)
        else:
            self.time_text_embed = ConditionEmbedding(D, c.pooled_projection_dim, c.guidance_embeds)
        self.transformer_blocks = nn.ModuleList([DualStreamBlock(D, heads, c.mlp_ratio) for _ in range(c.num_layers)])
        self.single_transformer_blocks = nn.ModuleList(
            [SingleStreamBlock(D, heads, c.mlp_ratio) for _ in range(c.num_single_layers)]
        )
        self.norm_out = FinalLayer(D)
        self.proj_out = nn.Linear(D, c.patch_volume * c.out_channels)
        self.gradient_checkpointing = False
        self._joint_attention_fn: JointAttentionFn | None = None
        self.attention_backend: AttentionBackend = get_backend(attention_backend, config_value=c.attention_backend)
        self.initialize_weights()

    # --- attention hook --------------------------------------------------------------------------

    @torch.compiler.disable  # outside compiled blocks: collectives, per-sample lengths (dit/compile.py)
    def joint_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout) -> torch.Tensor:
        """Every joint (video + text) attention goes through here: `[B, S, H, Dh]` x3 -> `[B, S, H, Dh]`."""
        if self._joint_attention_fn is not None:
            return self._joint_attention_fn(q, k, v, layout)
        return joint_attention(q, k, v, layout, self.attention_backend)

    def set_joint_attention(self, fn: JointAttentionFn | None) -> None:
        """Replace the joint attention (e.g. by a sequence-parallel one); None restores the default."""
        self.__dict__["_joint_attention_fn"] = fn  # never registered as a submodule, even if fn is one

    def set_attention_backend(self, name: str | None) -> None:
        """Pick the kernel of the default joint attention: name, else $OMNIDIT_ATTENTION_BACKEND, else config."""
        self.attention_backend = get_backend(name, config_value=self.config.attention_backend)

    # --- LoRA adapters (dit/lora.py) --------------------------------------------------------------

    def load_lora(self, source, *, name: str | None = None, scale: float = 1.0) -> str:
        """Load a LoRA (.safetensors path, folder or state dict; diffusers/PEFT, kohya/musubi or original
        Tencent names) and make it active at `scale`; returns its name (default: the file's stem)."""
        from omnidit.dit import lora

        return lora.load(self, source, name=name, scale=scale)

    def set_loras(self, scales: dict[str, float], *, merge: bool = False) -> None:
        """Exactly these adapters `{name: scale}` active ({}: none); `merge` fuses them into the weights."""
        from omnidit.dit import lora

        lora.set_loras(self, scales, merge=merge)

    def unload_lora(self, name: str) -> None:
        """Remove an adapter; the base weights and modules are restored bit-for-bit."""
        from omnidit.dit import lora

        lora.unload(self, name)

    # --- init ----------------------------------------------------------------------------------

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT-paper init for training from scratch: xavier linears, N(0, 0.02) timestep MLPs, and
        zeroed adaLN modulations and output layer so every block starts as the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, RMSNorm)):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for emb in self.modules():
            if isinstance(emb, (ConditionEmbedding, hv15.TimeEmbedding)):
                for mlp in (emb.timestep_embedder, getattr(emb, "guidance_embedder", None),
                            getattr(emb, "timestep_embedder_r", None)):
                    if mlp is not None:
                        nn.init.normal_(mlp.linear_1.weight, std=0.02)
                        nn.init.normal_(mlp.linear_2.weight, std=0.02)
        zeroed = [self.norm_out.linear, self.proj_out]
        zeroed += [m.linear for m in self.modules() if isinstance(m, Modulation)]
        zeroed += [b.norm_out.linear for b in self.modules() if isinstance(b, RefinerBlock)]
        for lin in zeroed:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    # --- forward -------------------------------------------------------------------------------

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        *,
        encoder_hidden_states_2: torch.Tensor | None = None,
        encoder_attention_mask_2: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        timestep_r: torch.Tensor | None = None,
        cache: StepCache | None = None,
    ) -> torch.Tensor:
        """`[B, C, T, H, W]` latents -> `[B, C_out, T, H, W]` prediction (see module docstring).

        Three stages, so sequence parallelism (omnidit/parallel) can split the video tokens after
        `embed` and gather them after `project_out` without re-implementing either. `cache`: a
        step-cache policy (cache.py) of the current generation, consulted by the block loop.
        HunyuanVideo-1.5 takes no `pooled_projections`/`guidance` but HunyuanVideo15Transformer3DModel's
        keywords: ByT5 glyph tokens `encoder_hidden_states_2 [B, L2, D2]` with `encoder_attention_mask_2
        [B, L2]`, SigLIP `image_embeds [B, Ni, Di]` (all zero or None: text-to-video) and MeanFlow's
        `timestep_r [B]`.
        """
        e = self.embed(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections,
                       guidance, encoder_hidden_states_2=encoder_hidden_states_2,
                       encoder_attention_mask_2=encoder_attention_mask_2, image_embeds=image_embeds,
                       timestep_r=timestep_r)
        img = self.run_blocks(e.img, e.txt, e.temb, e.rope, e.layout, cache=cache)  # [B, N, D]
        out = self.project_out(img, e.temb)  # [B, N, C_out * pt * ph * pw]
        return unpatchify(out, e.grid, self.patch)  # [B, C_out, T, H, W]

    def embed(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        *,
        encoder_hidden_states_2: torch.Tensor | None = None,
        encoder_attention_mask_2: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        timestep_r: torch.Tensor | None = None,
    ) -> Embedded:
        """Inputs of `forward` -> token sequences, conditioning, RoPE table and joint layout."""
        grid = self._check_inputs(hidden_states, encoder_hidden_states, encoder_attention_mask, pooled_projections)
        B, c = hidden_states.shape[0], self.config
        timestep, guidance, timestep_r = (_per_sample(t, B) for t in (timestep, guidance, timestep_r))  # [B]
        text, mask, lengths, padded = _trim_text(encoder_hidden_states, encoder_attention_mask)
        txt = self.context_embedder(text, timestep, mask, padded)  # [B, L, D]
        if c.family == HV15:
            hv15.check_inputs(c, hidden_states, text, mask, pooled_projections, guidance, encoder_hidden_states_2,
                              encoder_attention_mask_2, image_embeds)
            temb = self.time_embed(timestep, timestep_r)  # [B, D]
            txt, lengths = hv15.joint_text(self, txt, mask, encoder_hidden_states_2, encoder_attention_mask_2,
                                           image_embeds)  # [B, L', D]: [image | glyph | text] per sample
        else:
            extra = {"encoder_hidden_states_2": encoder_hidden_states_2, "encoder_attention_mask_2":
                     encoder_attention_mask_2, "image_embeds": image_embeds, "timestep_r": timestep_r}
            given = sorted(k for k, v in extra.items() if v is not None)
            if given:
                raise ValueError(f"{given}: HunyuanVideo-1.5 inputs; this DiT is family {c.family!r}")
            temb = self.time_text_embed(timestep, pooled_projections, guidance)  # [B, D]
        img = self.x_embedder(hidden_states)  # [B, N, D]
        max_text = int(lengths.max())
        txt = txt[:, :max_text]  # [B, L', D]; tokens past every sample's length are never attended
        layout = JointLayout(n_img=img.shape[1], text_lengths=lengths, max_text=max_text)
        rope = rope_3d(grid, self.config.rope_axes_dim, self.config.rope_theta, img.device)  # [N, Dh/2] complex
        return Embedded(img, txt, temb, rope, layout, grid)

    def project_out(self, img: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Final adaLN + linear, per token: `[B, N, D]` -> `[B, N, C_out * pt * ph * pw]`."""
        return self.proj_out(self.norm_out(img, temb))

    def run_blocks(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        temb: torch.Tensor,
        rope: torch.Tensor,
        layout: JointLayout,
        *,
        cache: StepCache | None = None,
        reduce: RowReduce | None = None,
    ) -> torch.Tensor:
        """The transformer proper on token sequences: img `[B, N, D]`, txt `[B, L, D]` -> img `[B, N, D]`.

        With a `cache` the policy decides which blocks run (cache.py); `reduce` is how its skip
        metric is summed across processes (the parallel runtime's; None: this process only).
        """
        if cache is not None:
            return cache.run(self, img, txt, temb, rope, layout, reduce)
        return self.run_block_range(img, txt, temb, rope, layout)[0]

    def run_block_range(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        temb: torch.Tensor,
        rope: torch.Tensor,
        layout: JointLayout,
        start: int = 0,
        stop: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks [start, stop) of the dual-stream then single-stream stack -> (img `[B, N, D]`, txt `[B, L, D]`)."""
        attend, dual = self.joint_attention, len(self.transformer_blocks)
        stop = dual + len(self.single_transformer_blocks) if stop is None else stop
        for block in self.transformer_blocks[start:stop]:
            img, txt = self._call(block, img, txt, temb, rope, layout, attend)  # [B, N, D], [B, L, D]
        singles = self.single_transformer_blocks[max(0, start - dual) : max(0, stop - dual)]
        if len(singles):
            x = torch.cat([img, txt], dim=1)  # [B, S, D]
            rope_joint = rope_with_text_identity(rope, txt.shape[1])  # [S, Dh/2] complex
            for block in singles:
                x = self._call(block, x, temb, rope_joint, layout, attend)  # [B, S, D]
            img, txt = x[:, : layout.n_img], x[:, layout.n_img :]  # [B, N, D], [B, L, D]
        return img, txt

    def block_input(self, img: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """The first block's timestep-modulated video input `[B, N, D]` (TeaCache's signal)."""
        if len(self.transformer_blocks):
            return self.transformer_blocks[0].modulated_input(img, temb)
        return self.single_transformer_blocks[0].modulated_input(img, temb)

    def _call(self, block: nn.Module, *args):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def _check_inputs(self, x, text, mask, pooled) -> tuple[int, int, int]:
        c = self.config
        if x.ndim != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"hidden_states must be [B, {c.in_channels}, T, H, W], got {tuple(x.shape)}")
        B, _, T, H, W = x.shape
        pt, p = c.patch_size_t, c.patch_size
        if T % pt or H % p or W % p:
            raise ValueError(
                f"hidden_states T, H, W = {T}, {H}, {W} must be multiples of the patch size ({pt}, {p}, {p})"
            )
        if text.ndim != 3 or text.shape[0] != B or text.shape[2] != c.text_embed_dim:
            raise ValueError(f"encoder_hidden_states must be [{B}, L, {c.text_embed_dim}], got {tuple(text.shape)}")
        if tuple(mask.shape) != tuple(text.shape[:2]):
            raise ValueError(f"encoder_attention_mask must be {tuple(text.shape[:2])}, got {tuple(mask.shape)}")
        if c.family != HV15 and (pooled is None or tuple(pooled.shape) != (B, c.pooled_projection_dim)):
            raise ValueError(
                f"pooled_projections must be [{B}, {c.pooled_projection_dim}], got "
                f"{None if pooled is None else tuple(pooled.shape)}"
            )
        return T // pt, H // p, W // p

    # --- checkpoints ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        attention_backend: str | None = None,
        weights: str | None = None,
    ) -> DiT:
        """Load a diffusers-format transformer folder (config.json + safetensors, sharded or not) of
        HunyuanVideoTransformer3DModel or (by config `_class_name`) HunyuanVideo15Transformer3DModel.

        The model is built on the meta device and every tensor is read straight onto `device` in
        `dtype` (None keeps the stored dtype), so no full-precision host copy is ever made.
        Original Tencent keys (`double_blocks.*`, ...) are converted on the fly.
        `weights="fp8"` stores the blocks' Linears as float8 with per-channel scales (dit/fp8.py),
        quantised tensor by tensor as they are read; `dtype` is then the compute dtype.
        "bf16" / "fp32" are shorthands for that `dtype`.
        """
        from omnidit.dit import fp8
        from omnidit.dit.checkpoint import load_state_dict, read_config

        if weights is not None and weights not in fp8.WEIGHTS:
            raise ValueError(f"weights must be one of {list(fp8.WEIGHTS)}, got {weights!r}")
        if weights in ("bf16", "fp32"):
            want = torch.bfloat16 if weights == "bf16" else torch.float32
            if dtype is not None and dtype != want:
                raise ValueError(f"weights={weights!r} contradicts dtype={dtype}")
            dtype = want
        config = read_config(path)
        with torch.device("meta"):
            model = cls(config, attention_backend=attention_backend)  # no memory, no init cost
        transform = None
        if weights == "fp8":
            names = list(fp8.fp8_targets(model))
            fp8.swap_to_fp8(model, names)
            targets = {f"{n}.weight": n for n in names}

            def transform(key, t):
                return fp8.quantize_state({key: t}, [targets[key]]) if key in targets else {key: t}
        state = load_state_dict(path, config, dtype=dtype, device=torch.device(device or "cpu"), transform=transform)
        _check_state_dict(model, state, path)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def save_pretrained(self, path: str | Path, *, max_shard_size: int | str | None = "10GB") -> None:
        """Write config.json + safetensors (sharded past `max_shard_size`, as diffusers does) that
        diffusers' `HunyuanVideoTransformer3DModel.from_pretrained` loads."""
        from omnidit.dit.checkpoint import save_folder

        save_folder(path, self.config, self.state_dict(), max_shard_size=max_shard_size)


def _per_sample(t: torch.Tensor | None, B: int) -> torch.Tensor | None:
    """A scalar or `[B]` per-sample value (timestep, guidance) -> `[B]`; None stays None."""
    return t.reshape(-1).expand(B) if t is not None and t.numel() == 1 else t


def _trim_text(
    text: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """One host read of the `[B, L]` mask -> (text, mask, lengths LongTensor[B] on CPU, refiner needs a mask).

    With right padding (the usual case) text and mask are cut to the longest sample before the
    refiner: real tokens never attend padding, so their outputs are unchanged. Other masks keep
    diffusers' exact semantics: positional in the refiner, a length count in joint attention.
    """
    host = mask.detach().to("cpu").bool()  # [B, L]
    lengths = host.sum(dim=1)  # [B]
    if bool((lengths == 0).any()):
        raise ValueError("encoder_attention_mask: every sample needs at least one real (1) text token")
    max_len = int(lengths.max())
    right_padded = bool((host == (torch.arange(host.shape[1]) < lengths[:, None])).all())
    if right_padded:
        text, mask, host = text[:, :max_len], mask[:, :max_len], host[:, :max_len]
    return text, mask, lengths, not bool(host.all())


def _check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise ValueError(
            f"weights in {str(path)!r} do not match its config.json: missing {len(missing)} key(s) {missing[:8]}, "
            f"unexpected {len(unexpected)} key(s) {unexpected[:8]}"
        )
    bad = [f"{k}: {tuple(state[k].shape)} != {s}" for k, s in want.items() if tuple(state[k].shape) != s]
    if bad:
        raise ValueError(f"weights in {str(path)!r} have wrong shapes for its config.json: {bad[:8]}")
