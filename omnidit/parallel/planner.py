"""Choose (ulysses, ring, cfg) degrees for a world size, on paper: volume, time and memory per GPU.

Per GPU and per denoising step (one DiT forward per GPU), with A = dual + single blocks (joint
attentions), B = samples per forward on this GPU, N video tokens, T text tokens, P = U * R,
n = ceil(N / P) tokens per GPU, H heads of Dh, b bytes per element, C = output features per token:

    Ulysses  A * B * (4 * n * H * Dh * b * (U - 1) / U        q, k, v all-to-all in, output back
                      + (U - 1) * T * (H / U) * Dh * b)        text rows: one all-gather over heads
    Ring     A * B * (2 * (R - 1) * n * H * Dh * b            K, V blocks of U * n tokens x H / U heads
                      + (R - 1) * T * (H / U) * (Dh + 1) * 4)  text partials (out, lse) in fp32
    edges    B * (P - 1) * n * C * b                           gather of the output tokens
    CFG      (c - 1) * B * N * C * b                           gather of the other branch's prediction

Times: Ulysses traffic is exposed; each ring step's transfer overlaps that step's attention, so only
max(0, transfer - compute) per step is exposed, plus the step's log-sum-exp merge (memory-bound).
Ulysses groups are consecutive ranks, so they stay inside a node when U divides gpus_per_node; a
ring whose P ranks span nodes runs at the inter-node bandwidth (its steps are synchronous: the
slowest hop sets the pace). Compute counts the text
tokens' linear layers on every GPU (text is replicated). These are estimates for ranking, not
measurements: the hardware numbers are assumptions (see `Hardware`).
"""

from __future__ import annotations

from dataclasses import dataclass

from omnidit.parallel.state import ParallelConfig


@dataclass(frozen=True)
class Workload:
    """The shapes that set the cost of one denoising step."""

    heads: int
    head_dim: int
    video_tokens: int
    text_tokens: int
    dual_blocks: int
    single_blocks: int
    out_per_token: int  # C_out * patch volume: what the edge gather moves per token
    mlp_ratio: float = 4.0
    batch: int = 1  # prompts per generation
    true_cfg: bool = False  # an unconditional branch doubles the forward batch
    bytes_per_el: int = 2  # bf16

    @property
    def dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def params(self) -> float:
        """Parameters of the blocks (dual (20 + 4m) D^2, single (7 + 2m) D^2) plus ~3% embedders/refiner."""
        m, D2 = self.mlp_ratio, self.dim**2
        return 1.03 * D2 * ((20 + 4 * m) * self.dual_blocks + (7 + 2 * m) * self.single_blocks)

    @classmethod
    def hunyuan_video(cls, *, height: int = 720, width: int = 1280, frames: int = 129, text_tokens: int = 256,
                      true_cfg: bool = False) -> Workload:
        """HunyuanVideo: 24 heads x 128, 20 dual + 40 single blocks; VAE 8x spatial, 4x temporal; patch 1x2x2."""
        latent_frames = (frames - 1) // 4 + 1
        n = latent_frames * (height // 16) * (width // 16)
        return cls(heads=24, head_dim=128, video_tokens=n, text_tokens=text_tokens, dual_blocks=20,
                   single_blocks=40, out_per_token=16 * 4, true_cfg=true_cfg)

    @classmethod
    def hunyuan_video_15(cls, *, height: int = 720, width: int = 1280, frames: int = 121, text_tokens: int = 256,
                         true_cfg: bool = True) -> Workload:
        """HunyuanVideo-1.5: 16 heads x 128, 54 dual blocks, no single; VAE 16x spatial, 4x temporal; patch 1;
        32 output channels; real CFG (two branches per step) unless a CFG-distilled variant."""
        latent_frames = (frames - 1) // 4 + 1
        n = latent_frames * (height // 16) * (width // 16)
        return cls(heads=16, head_dim=128, video_tokens=n, text_tokens=text_tokens, dual_blocks=54,
                   single_blocks=0, out_per_token=32, true_cfg=true_cfg)


@dataclass(frozen=True)
class Hardware:
    """Assumed per-GPU numbers (H100 SXM class): effective, not peak."""

    gpus_per_node: int = 8
    intra_node_gb_s: float = 300.0  # NVLink, what an all-to-all or P2P achieves per GPU
    inter_node_gb_s: float = 45.0  # one 400 Gb/s NIC per GPU
    tflops: float = 400.0  # dense bf16 actually reached by attention / GEMMs
    hbm_gb_s: float = 3000.0  # device memory bandwidth (ring merges are memory-bound)
    memory_gb: float = 80.0
    latency_s: float = 20e-6  # per collective or ring step
    # Live [tokens, D] tensors at a block's peak, measured against CPU peaks (benchmarks/planner_memory.py: 18.6
    # per token with the embed's sequence, fp32 and bf16): the end of a single-stream block holds the pre-concat
    # stream, x, h, q, k, v, the attention output, the MLP (m D), the concat ((1 + m) D), its projection and the
    # residual sum: 10 + 2m = 18 for m = 4. memory.py uses this value too.
    activation_factor: float = 18.0


@dataclass(frozen=True)
class PlanRow:
    config: ParallelConfig
    tokens_per_gpu: int  # video chunk (padding included) + text
    padding: int
    ulysses_bytes: float
    ring_bytes: float
    gather_bytes: float  # edge gather + CFG gather
    comm_exposed_s: float
    compute_s: float
    memory_gb: float
    fits: bool

    @property
    def step_s(self) -> float:
        return self.compute_s + self.comm_exposed_s


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(w: Workload, world_size: int) -> list[ParallelConfig]:
    """Every (U, R, c) with U * R * c = world_size, U dividing the heads, c = 2 only with true CFG."""
    out = []
    for c in ((1, 2) if w.true_cfg else (1,)):
        if world_size % c:
            continue
        p = world_size // c
        for u in _divisors(p):
            if w.heads % u == 0:
                out.append(ParallelConfig(ulysses_degree=u, ring_degree=p // u, cfg_degree=c))
    return out


def estimate(w: Workload, cfg: ParallelConfig, hw: Hardware = Hardware()) -> PlanRow:
    U, R, c = cfg.ulysses_degree, cfg.ring_degree, cfg.cfg_degree
    P, A, b, Dh, H, T, N = cfg.sp_degree, w.dual_blocks + w.single_blocks, w.bytes_per_el, w.head_dim, w.heads, \
        w.text_tokens, w.video_tokens
    B = w.batch * (2 if w.true_cfg else 1) // c
    n = -(-N // P)
    h = H // U
    uly = A * B * (4 * n * H * Dh * b * (U - 1) / U + (U - 1) * T * h * Dh * b)
    ring = A * B * (2 * (R - 1) * n * H * Dh * b + (R - 1) * T * h * (Dh + 1) * 4)
    gathers = B * (P - 1) * n * w.out_per_token * b + (c - 1) * B * N * w.out_per_token * b

    flops = hw.tflops * 1e12
    linear = 2 * (4 + 2 * w.mlp_ratio) * w.dim**2 * B * A * (n + T)  # text linears replicated on every GPU
    attention = 4 * B * A * (P * n + T) * (N + T) * H * Dh / P
    compute_s = (linear + attention) / flops

    gb = 1e9
    bw_u = hw.intra_node_gb_s if hw.gpus_per_node % U == 0 else hw.inter_node_gb_s
    bw_r = hw.intra_node_gb_s if P <= hw.gpus_per_node else hw.inter_node_gb_s
    bw_all = hw.intra_node_gb_s if P * c <= hw.gpus_per_node else hw.inter_node_gb_s
    ring_step_comm = 2 * B * U * n * h * Dh * b / (bw_r * gb)
    ring_step_compute = 4 * B * (U * n + T) * (U * n) * h * Dh / flops
    exposed = uly / (bw_u * gb) + (3 * A * hw.latency_s if U > 1 else 0.0)
    if R > 1:
        merge_s = 16 * B * U * n * h * Dh / (hw.hbm_gb_s * gb)  # ~4 fp32 passes over the output per step
        exposed += A * (R - 1) * (max(0.0, ring_step_comm - ring_step_compute) + merge_s + hw.latency_s)
        exposed += A * B * (R - 1) * T * h * (Dh + 1) * 4 / (bw_r * gb)
    exposed += gathers / (bw_all * gb)

    weights = w.params * b
    act = hw.activation_factor * B * (n + T) * w.dim * b + B * N * w.dim * b  # + the whole sequence at embed
    if R > 1:
        act += B * U * n * h * Dh * (2 * 4 + 4 * b)  # fp32 accumulators + two K/V receive buffers
    mem = (weights + act) / 2**30
    return PlanRow(cfg, n + T, n * P - N, uly, ring, gathers, exposed, compute_s, mem, mem <= hw.memory_gb)


def plan(w: Workload, world_size: int, hw: Hardware = Hardware()) -> list[PlanRow]:
    """Every valid choice, fastest estimated step first (those that fit in memory before the rest)."""
    rows = [estimate(w, c, hw) for c in candidates(w, world_size)]
    if not rows:
        raise ValueError(f"no (ulysses, ring, cfg) degrees multiply to world_size={world_size}")
    return sorted(rows, key=lambda r: (not r.fits, r.step_s))


def choose(w: Workload, world_size: int, hw: Hardware = Hardware()) -> ParallelConfig:
    return plan(w, world_size, hw)[0].config


def single_gpu_step_s(w: Workload, hw: Hardware = Hardware()) -> float:
    """The step time of one GPU doing everything (the speed-up baseline)."""
    return estimate(w, ParallelConfig(), hw).compute_s


def markdown(rows: list[PlanRow], w: Workload, hw: Hardware = Hardware()) -> str:
    """The plan as a markdown table (volumes are bytes received per GPU per denoising step)."""
    base = single_gpu_step_s(w, hw)
    world = rows[0].config.world_size
    head = ("| U | R | CFG | tokens/GPU (pad) | Ulysses GB | Ring GB | gathers MB | exposed comm s | compute s "
            "| est. step s | speed-up | mem GB |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for i, r in enumerate(rows):
        c = r.config
        mark = " **(chosen)**" if i == 0 else ""
        lines.append(
            f"| {c.ulysses_degree} | {c.ring_degree} | {c.cfg_degree} | {r.tokens_per_gpu:,} ({r.padding}) "
            f"| {r.ulysses_bytes / 1e9:.1f} | {r.ring_bytes / 1e9:.1f} | {r.gather_bytes / 1e6:.1f} "
            f"| {r.comm_exposed_s:.3f} | {r.compute_s:.3f} | {r.step_s:.3f}{mark} | {base / r.step_s:.1f}x / {world} "
            f"| {r.memory_gb:.1f}{'' if r.fits else ' (too big)'} |"
        )
    return "\n".join(lines)
