"""Memory per GPU of one generation, and the plan that fits: degrees, weights, offload, VAE tiling.

Per GPU, in bytes (b = 2 for bf16):
    DiT weights   blocks x (1 byte + scales if fp8, else b) + the rest x b; under offload="blocks" only
                  the rest plus two resident groups of two blocks each stay on the GPU
    activations   the communication model's formula (planner.estimate) with its measured
                  Hardware.activation_factor: that many x (n + T) x D x b per sample, plus the whole sequence
                  once at embed, plus ring buffers
    text encoders their stored bytes while they encode (parked on the host under offload)
    VAE decode    weights + the live activations of one piece: VAE_LIVE x C0 x frames x pixels x b, for one
                  temporal window (16+1 frames: diffusers' default framewise decode, on in every decode here)
                  of whole frames untiled, or of one 256x256 tile tiled; plus the output video and the decoded
                  pieces awaiting their blend: untiled, every window's (the video x 16/12 past one window);
                  tiled, one window's tiles (x (256/192)^2) and the previous window's frames

Checked against measured peaks of small CPU configs (benchmarks/planner_memory.py,
tests/test_planner_memory.py): activations and VAE decode within 25%.

The phases run one after another, so the peak is the largest phase, not the sum:
    denoise = DiT + activations (+ text encoders unless parked), decode = DiT + VAE decode.
`choose` walks weights bf16 -> fp8, offload none -> blocks, VAE untiled -> tiled, and returns the first
(fastest) plan that fits; the step time is the planner's plus, under offload, the exposed transfer of
the block weights over PCIe (overlapped with compute by the prefetch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from omnidit.parallel.planner import Hardware, PlanRow, Workload, plan
from omnidit.parallel.planner import estimate as planner_estimate
from omnidit.parallel.state import ParallelConfig

GIB = 2**30
# Live C0-channel full-resolution maps per pixel at the decode's peak, measured (11.0-11.5 on the CPU): the
# first full-resolution resnet holds its 2 C0-channel upsampled input (kept for the shortcut), its SiLU, the
# causal pad's copy and the convolution's reordered copy (8), plus the C0 output and its copies.
VAE_LIVE = 11.0
WINDOW_FRAMES, WINDOW_OVERLAP = 17, 16 / 12  # diffusers' temporal windows: 16 + 1 frames every 12
TILE, TILE_OVERLAP = 256, (256 / 192) ** 2  # spatial tiles: 256x256 every 192
PCIE_GB_S = 25.0  # host -> GPU copies of offloaded blocks (pinned memory)


@dataclass(frozen=True)
class ModelMemory:
    """What the memory model needs to know about a model (see `from_folder` and `hunyuan_video`)."""

    block_params: float  # in the dual + single blocks (what offload streams)
    fp8_params: float  # of which the Linear weights, stored as float8 under weights="fp8" (dit/fp8.py)
    fp8_rows: float  # their output channels: one fp32 scale each
    other_params: float  # embedders, refiner, output layer
    blocks: int
    largest_block: float  # the largest block's share of block_params (a dual-stream block's)
    text_encoder_bytes: float
    vae_params: float
    vae_channels: int  # the decoder's finest-level channels (block_out_channels[0])
    spatial_ratio: int = 8
    temporal_ratio: int = 4

    @classmethod
    def hunyuan_video(cls) -> ModelMemory:
        """HunyuanVideo 13B: 12.8e9 block parameters, LLaVA-Llama-3-8B (7.5e9) + CLIP-L text (0.12e9) in bf16,
        its VAE (0.25e9 parameters, 128 channels at full resolution)."""
        from omnidit.dit import DiT, preset

        return cls.from_dit(DiT, preset("hunyuan-video"), text_encoder_bytes=2 * (7.5e9 + 0.123e9),
                            vae_params=0.246e9, vae_channels=128)

    @classmethod
    def from_dit(cls, dit_cls, config, **rest) -> ModelMemory:
        import torch

        from omnidit.dit.fp8 import BLOCK_PREFIXES, fp8_targets

        with torch.device("meta"):
            m = dit_cls(config)
        blocks = sum(p.numel() for n, p in m.named_parameters() if n.startswith(BLOCK_PREFIXES))
        linears = [m.get_submodule(n) for n in fp8_targets(m)]
        total = sum(p.numel() for p in m.parameters())
        largest = max(sum(p.numel() for p in b.parameters()) for b in [*m.transformer_blocks,
                                                                        *m.single_transformer_blocks])
        return cls(largest_block=largest / blocks, block_params=blocks,
                   fp8_params=sum(x.weight.numel() for x in linears),
                   fp8_rows=sum(x.out_features for x in linears), other_params=total - blocks,
                   blocks=config.num_layers + config.num_single_layers, **rest)

    @classmethod
    def from_folder(cls, path) -> ModelMemory:
        """A diffusers-format pipeline folder: transformer config, text encoder files, VAE config."""
        import json
        from pathlib import Path

        from omnidit.dit import DiT
        from omnidit.dit.checkpoint import read_config

        root = Path(path)
        text = sum(p.stat().st_size for d in root.glob("text_encoder*") for p in d.glob("*.safetensors"))
        vae_cfg = json.loads((root / "vae" / "config.json").read_text())
        vae_bytes = sum(p.stat().st_size for p in (root / "vae").glob("*.safetensors"))
        return cls.from_dit(DiT, read_config(root / "transformer"), text_encoder_bytes=float(text),
                            vae_params=vae_bytes / 4, vae_channels=int(vae_cfg["block_out_channels"][0]),
                            spatial_ratio=int(vae_cfg.get("spatial_compression_ratio", 8)),
                            temporal_ratio=int(vae_cfg.get("temporal_compression_ratio", 4)))


@dataclass(frozen=True)
class MemoryPlan:
    row: PlanRow  # degrees, communication and compute estimates
    weights: str  # bf16 | fp8
    offload: str  # none | blocks
    vae_tiling: bool
    dit_gb: float
    activations_gb: float
    text_encoders_gb: float  # on the GPU while encoding (0 when parked on the host)
    vae_decode_gb: float
    step_s: float
    memory_gb: float  # the peak phase
    fits: bool


def dit_bytes(m: ModelMemory, weights: str, offload: str, b: int = 2) -> float:
    """The DiT's bytes on each GPU; under offload at most two groups of two blocks are resident (bounded
    here by four of the largest block)."""
    blocks = m.block_params * b
    if weights == "fp8":  # one byte per Linear weight plus an fp32 scale per output channel
        blocks = (m.block_params - m.fp8_params) * b + m.fp8_params + 4 * m.fp8_rows
    resident = min(1.0, 4 * m.largest_block) if offload == "blocks" else 1.0
    return m.other_params * b + blocks * resident


def vae_decode_bytes(m: ModelMemory, frames: int, height: int, width: int, tiled: bool, b: int = 2) -> float:
    """Weights + one piece's live activations + the output video + the decoded pieces before their blend
    (none when the video is one piece).

    Untiled is diffusers' framewise decode, which holds every window's frames until it blends them (the video
    x their overlap); tiled is vae_tiling.py's, which holds one window's tiles (x their overlap in space) and
    the previous window's frames to fade into, whatever the length."""
    pixels = height * width
    windowed, split = frames > WINDOW_FRAMES, tiled and max(height, width) > TILE
    window = min(frames, WINDOW_FRAMES)
    piece = window * (min(height, TILE) * min(width, TILE) if tiled else pixels)
    live = VAE_LIVE * m.vae_channels * piece * b
    video = 3 * frames * pixels * b
    if not tiled:
        held = video * WINDOW_OVERLAP if windowed else 0.0
    else:
        held = 3 * window * pixels * b * ((TILE_OVERLAP if split else 0) + (1 if windowed else 0))
    return m.vae_params * b + live + video + held


def activation_bytes(w: Workload, config: ParallelConfig, hw: Hardware = Hardware()) -> float:
    """The DiT forward's activations on each GPU: the planner's formula, with its `hw.activation_factor`."""
    return _activations(w, planner_estimate(w, config, hw))


def _activations(w: Workload, row: PlanRow) -> float:
    return row.memory_gb * GIB - w.params * w.bytes_per_el  # the planner's memory less its weights


def estimate(m: ModelMemory, w: Workload, row: PlanRow, *, weights: str, offload: str, tiled: bool,
             frames: int, height: int, width: int, hw: Hardware) -> MemoryPlan:
    dit = dit_bytes(m, weights, offload)
    act = _activations(w, row)  # the row is the planner's estimate of this config on this hardware
    text = 0.0 if offload == "blocks" else m.text_encoder_bytes
    vae = vae_decode_bytes(m, frames, height, width, tiled)
    peak = max(dit + act, text + (dit if offload == "none" else 0.0), dit + vae)
    step = row.step_s
    if offload == "blocks":
        transfer = dit_bytes(m, weights, "none") / (PCIE_GB_S * 1e9)  # every block once per step
        step = max(step, transfer + row.comm_exposed_s)  # prefetch overlaps the copies with compute
    return MemoryPlan(row, weights, offload, tiled, dit / GIB, act / GIB, text / GIB, vae / GIB, step,
                      peak / GIB, peak / GIB <= hw.memory_gb)


def plans(m: ModelMemory, w: Workload, gpus: int, *, frames: int, height: int, width: int,
          hw: Hardware = Hardware()) -> list[MemoryPlan]:
    """Every (degrees, weights, offload, tiling), in preference order: those that fit first, bf16 before fp8
    and no offload before offload (one step of either), untiled before tiled, the fastest step among ties;
    then those that do not fit, smallest first."""
    out = []
    for row in plan(w, gpus, replace(hw, memory_gb=1e9)):  # fit is decided here, with the full memory model
        for weights in ("bf16", "fp8"):
            for offload in ("none", "blocks"):
                for tiled in (False, True):
                    out.append(estimate(m, w, row, weights=weights, offload=offload, tiled=tiled, frames=frames,
                                        height=height, width=width, hw=hw))
    rank = {"bf16": 0, "fp8": 1, "none": 0, "blocks": 1}
    fitting = sorted((p for p in out if p.fits), key=lambda p: (rank[p.weights] + rank[p.offload], p.vae_tiling,
                                                                 p.step_s))
    return fitting + sorted((p for p in out if not p.fits), key=lambda p: p.memory_gb)  # none fits: the smallest


def choose(m: ModelMemory, w: Workload, gpus: int, **kw) -> MemoryPlan:
    return plans(m, w, gpus, **kw)[0]


def workload_of(config, *, frames: int, height: int, width: int, spatial_ratio: int = 8, temporal_ratio: int = 4,
                text_tokens: int = 256, true_cfg: bool = False) -> Workload:
    """The planner's Workload of a DiT config (dit/config.py DiTConfig) at a video size."""
    p, pt = config.patch_size, config.patch_size_t
    latent_frames = (frames - 1) // temporal_ratio + 1
    n = (latent_frames // pt) * (height // (spatial_ratio * p)) * (width // (spatial_ratio * p))
    return Workload(heads=config.num_attention_heads, head_dim=config.attention_head_dim, video_tokens=n,
                    text_tokens=text_tokens, dual_blocks=config.num_layers, single_blocks=config.num_single_layers,
                    out_per_token=config.out_channels * p * p * pt, mlp_ratio=config.mlp_ratio, true_cfg=true_cfg)


def report(p: MemoryPlan, gpus: int, hw: Hardware) -> str:
    """The plan as the lines `omnidit plan` prints."""
    c = p.row.config
    lines = [
        f"gpus {gpus} x {hw.memory_gb:g} GB",
        (f"memory per GPU (GB): DiT weights {p.dit_gb:.1f} ({p.weights}"
         f"{', offload blocks' if p.offload == 'blocks' else ''}) | activations {p.activations_gb:.1f} "
         f"({p.row.tokens_per_gpu:,} tokens/GPU) | text encoders {p.text_encoders_gb:.1f}"
         f"{' (parked on the host)' if p.offload == 'blocks' else ''} | VAE decode {p.vae_decode_gb:.1f} "
         f"({'tiled' if p.vae_tiling else 'untiled'})"),
        f"peak {p.memory_gb:.1f} GB: {'fits' if p.fits else 'does NOT fit'}",
        (f"chosen: ulysses {c.ulysses_degree}, ring {c.ring_degree}, cfg {c.cfg_degree}; weights {p.weights}; "
         f"offload {p.offload}; vae tiling {'on' if p.vae_tiling else 'off'}"),
        (f"estimated step {p.step_s:.3f} s (compute {p.row.compute_s:.3f} s, exposed communication "
         f"{p.row.comm_exposed_s:.3f} s)"),
    ]
    return "\n".join(lines)
