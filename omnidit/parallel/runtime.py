"""`ParallelRuntime`: what a Pipeline needs to run one generation across processes.

- `forward(dit, ...)`: the DiT forward with the CFG axis splitting the batch (cond | uncond) and the
  sp axis splitting the video tokens between `dit.embed` and `dit.project_out` (shard.py); the
  attention inside goes through the hook of attention.py. The whole prediction comes back on
  every rank, so the sampler runs unchanged (and identically) everywhere.
- `encode_text(encoder, prompts, device)`: rank 0 encodes, everyone receives the same bits: text
  tokens are replicated state and must be identical on every rank.
- `broadcast_object` (seeds), `agree` (a cancel decision every rank takes at the same step).
"""

from __future__ import annotations

import dataclasses

import torch

from omnidit.dit.cache import RowReduce
from omnidit.dit.embeddings import unpatchify
from omnidit.parallel.attention import SequenceParallelAttention
from omnidit.parallel.comm import all_gather, broadcast_object, broadcast_tensor
from omnidit.parallel.shard import ShardedLayout, ShardSpec, gather_tokens, split_rope, split_tokens
from omnidit.parallel.state import ParallelState, destroy_parallel


class ParallelRuntime:
    """One process's share of a parallel generation (see module docstring)."""

    def __init__(self, state: ParallelState):
        self.state = state

    @property
    def device(self) -> torch.device:
        return self.state.device

    @property
    def is_output_rank(self) -> bool:
        return self.state.is_output_rank

    def describe(self) -> str:
        c, backend = self.state.config, "nccl" if self.device.type == "cuda" else "gloo"
        return (f"ulysses {c.ulysses_degree} x ring {c.ring_degree} x cfg {c.cfg_degree} = {c.world_size} "
                f"processes ({backend})")

    # ---- the DiT ------------------------------------------------------------------------

    def attach(self, dit) -> None:
        """Check the model fits the degrees and install the sequence-parallel attention hook."""
        self.state.config.check_heads(dit.config.num_attention_heads)
        if self.state.sp.world_size > 1:
            dit.set_joint_attention(SequenceParallelAttention(self.state, lambda: dit.attention_backend))

    def forward(self, dit, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                pooled_projections=None, guidance=None, *, cache=None, **conditions) -> torch.Tensor:
        """Same arguments and result as `dit(...)`; every rank passes the same inputs, gets the same output.

        `conditions`: the DiT's keyword inputs of HunyuanVideo-1.5 (`encoder_hidden_states_2`,
        `encoder_attention_mask_2`, `image_embeds`, `timestep_r`), split by the CFG axis like the rest.
        `cache` (omnidit/dit/cache.py) sees a `ParallelReduce`: its skip metric is summed over the
        sp ranks and gathered over the CFG ranks, so every rank skips the same steps."""
        args = (hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections, guidance)
        if self.state.world_size > 1 and torch.is_grad_enabled():
            # the collectives here are not differentiable: gradients would be silently wrong
            raise RuntimeError("parallel DiT forward is inference-only: call it under torch.no_grad()")
        cfg = self.state.cfg
        B = hidden_states.shape[0]
        if cfg.world_size == 1 or B % cfg.world_size:  # nothing to split (e.g. no CFG, batch 1): replicate
            return self._sp_forward(dit, *args, cache=cache, split=False, **conditions)
        part = B // cfg.world_size
        mine = [_batch_slice(a, B, cfg.rank * part, part) for a in args]
        conditions = {k: _batch_slice(v, B, cfg.rank * part, part) for k, v in conditions.items()}
        out = self._sp_forward(dit, *mine, cache=cache, split=True, **conditions)  # [B / c, C_out, T, H, W]
        return all_gather(out, cfg).flatten(0, 1)  # [B, C_out, T, H, W]: the one CFG gather of the step

    def _sp_forward(self, dit, hidden_states, timestep, text, mask, pooled, guidance, *, cache=None,
                    split: bool = False, **conditions):
        sp = self.state.sp
        e = dit.embed(hidden_states, timestep, text, mask, pooled, guidance, **conditions)
        if sp.world_size == 1:
            reduce = ParallelReduce(self.state, split, hidden_states.shape[0], None) if cache is not None else None
            img = dit.run_blocks(e.img, e.txt, e.temb, e.rope, e.layout, cache=cache, reduce=reduce)  # [B, N, D]
            return unpatchify(dit.project_out(img, e.temb), e.grid, dit.patch)  # [B, C_out, T, H, W]
        spec = ShardSpec(e.img.shape[1], sp.world_size, sp.rank)
        img = split_tokens(e.img, spec)  # [B, chunk, D]
        rope = split_rope(e.rope, spec)  # [chunk, Dh/2]
        layout = ShardedLayout(n_img=spec.chunk, text_lengths=e.layout.text_lengths, max_text=e.layout.max_text,
                               shard=spec)
        reduce = None
        if cache is not None:
            reduce = ParallelReduce(self.state, split, hidden_states.shape[0], spec.valid(spec.rank))
        img = dit.run_blocks(img, e.txt, e.temb, rope, layout, cache=cache, reduce=reduce)  # [B, chunk, D]
        out = dit.project_out(img, e.temb)  # [B, chunk, C_out * pt * ph * pw]: gather after the small head
        out = gather_tokens(out, spec, sp)  # [B, N, C_out * pt * ph * pw]
        return unpatchify(out, e.grid, dit.patch)  # [B, C_out, T, H, W]

    # ---- agreement between ranks ---------------------------------------------------------

    def encode_text(self, encoder, prompts: list[str], device: torch.device):
        """Encode on rank 0 and broadcast every tensor of its TextEmbeddings (a second encoder's glyph
        tokens too, where the family has them); the other ranks never run the text encoder."""
        from omnidit.tokenizers import TextEmbeddings

        world = self.state.world
        names = [f.name for f in dataclasses.fields(TextEmbeddings)]
        emb = encoder.encode(prompts, device=device) if world.rank == 0 else None
        meta = None
        if emb is not None:
            meta = {n: (tuple(t.shape), t.dtype) for n in names if (t := getattr(emb, n)) is not None}
        meta = broadcast_object(meta, world, device=self._object_device())
        got = {}
        for n, (shape, dtype) in meta.items():
            if 0 in shape:  # e.g. the [B, 0] pooled text of a family without one: nothing to send
                got[n] = torch.empty(shape, dtype=dtype, device=device)
                continue
            mine = getattr(emb, n) if emb is not None else None
            got[n] = broadcast_tensor(mine, world, shape=shape, dtype=dtype, device=self.device).to(device)
        return TextEmbeddings(**got)

    def broadcast_object(self, obj):
        """Rank 0's value of a small picklable object, on every rank (e.g. the seeds)."""
        return broadcast_object(obj, self.state.world, device=self._object_device())

    def agree(self, flag: bool) -> bool:
        """Rank 0's flag on every rank, so all ranks stop (or go on) at the same step."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        t = broadcast_tensor(t, self.state.world, shape=(1,), dtype=torch.int32, device=self.device)
        return bool(int(t.item()))

    def close(self) -> None:
        destroy_parallel(self.state)

    def _object_device(self):
        return self.device if self.device.type == "cuda" else None


class ParallelReduce(RowReduce):
    """A step cache's metric across processes: per-row sums added over the sp ranks' token chunks
    (all-gathered and added in rank order, so every rank gets the same bits), then the CFG ranks'
    batch parts concatenated in rank order (`split`: the CFG axis split the batch)."""

    def __init__(self, state: ParallelState, split: bool, rows: int, valid_tokens: int | None):
        self.state, self.split, self.rows, self.valid_tokens = state, split, rows, valid_tokens

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        x = all_gather(x.contiguous(), self.state.sp).sum(0)  # [rows, k]
        if self.split:
            x = all_gather(x, self.state.cfg).flatten(0, 1)  # [cfg * rows, k]
        return x

    def global_rows(self, local_rows: int) -> int:
        return local_rows * self.state.cfg.world_size if self.split else local_rows

    def local(self, x: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return x
        start = self.state.cfg.rank * self.rows
        return x[start : start + self.rows]


def _batch_slice(x, B: int, start: int, n: int):
    """Rows [start, start + n) of a per-sample tensor; broadcast scalars and None pass through."""
    if x is None or not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[0] != B:
        return x
    return x[start : start + n]
