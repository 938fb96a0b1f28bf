"""Tiled (and parallel) decode and encode for HunyuanVideo's causal video VAE.

A video is cut into overlapping windows in time and, within each, overlapping tiles in space;
each piece goes through the VAE alone (bounded activation memory), and neighbours are blended
with linear ramps over their overlap, in raster order (each tile with its already-blended upper
and left neighbours; each time window with the already-blended previous one), then cropped to the
stride. The geometry and the blend are those of diffusers' `AutoencoderKLHunyuanVideo` with
`enable_tiling()` (same tile settings, same output up to float rounding).

Parallel: the pieces are independent, so with an `Axis` of K processes (omnidit/parallel/state.py)
piece n is computed by process n mod K, the pieces are all-gathered (padded to a common shape, so
it works on gloo and NCCL alike) and every process blends the same result.

    video = tiled_decode(vae, z, Tiles.of(vae))            # one process
    video = tiled_decode(vae, z, Tiles.of(vae), axis=st.world)   # split across the processes
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Piece = tuple[int, int, int]  # (time window, tile row, tile column)


@dataclass(frozen=True)
class Tiles:
    """Tile settings in pixels/frames of the video (diffusers' `tile_sample_*` fields)."""

    height: int = 256
    width: int = 256
    frames: int = 16
    stride_height: int = 192
    stride_width: int = 192
    stride_frames: int = 12
    spatial: bool = True  # diffusers' use_tiling
    temporal: bool = True  # diffusers' use_framewise_decoding / _encoding

    def __post_init__(self) -> None:
        for name in ("height", "width", "frames", "stride_height", "stride_width", "stride_frames"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"tile {name} must be an integer >= 1, got {v!r}")
        for size, stride in (("height", "stride_height"), ("width", "stride_width"), ("frames", "stride_frames")):
            if getattr(self, stride) > getattr(self, size):
                raise ValueError(f"tile {stride} ({getattr(self, stride)}) must be <= {size} ({getattr(self, size)})")

    @classmethod
    def of(cls, vae, *, spatial: bool | None = None) -> Tiles:
        """The settings a diffusers VAE holds (`enable_tiling(...)` sets them); `spatial` defaults to its use_tiling."""
        return cls(vae.tile_sample_min_height, vae.tile_sample_min_width, vae.tile_sample_min_num_frames,
                   vae.tile_sample_stride_height, vae.tile_sample_stride_width, vae.tile_sample_stride_num_frames,
                   spatial=vae.use_tiling if spatial is None else spatial, temporal=vae.use_framewise_decoding)


@dataclass(frozen=True)
class _Axis:
    """One axis of the cut: input windows of `window` every `stride`; outputs blended over `blend`
    and cropped to `crop` (time: the first window keeps one frame more, later ones drop their first)."""

    window: int
    stride: int
    blend: int
    crop: int
    active: bool

    def slices(self, n: int, extra: int = 0) -> list[slice]:
        if not self.active:
            return [slice(0, n)]
        return [slice(s, s + self.window + extra) for s in range(0, n, self.stride)]


def _ramp_blend(a: torch.Tensor, b: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
    """b with its first `extent` entries along `dim` faded in from a's last ones (weights y/extent)."""
    e = min(a.shape[dim], b.shape[dim], extent)
    if e <= 0:
        return b
    shape = [1] * b.ndim
    shape[dim] = e
    w = torch.arange(e, dtype=torch.float64) / e  # [e], the ramp in double, like Python floats
    head = a.narrow(dim, a.shape[dim] - e, e) * (1 - w).to(b.dtype).to(b.device).view(shape) \
        + b.narrow(dim, 0, e) * w.to(b.dtype).to(b.device).view(shape)
    return torch.cat([head, b.narrow(dim, e, b.shape[dim] - e)], dim=dim)


def _plan(x: torch.Tensor, t: _Axis, h: _Axis, w: _Axis) -> dict[Piece, tuple[slice, slice, slice]]:
    """Every piece's input slices (time, height, width) of `x [B, C, T, H, W]`."""
    _, _, T, H, W = x.shape
    times = t.slices(T, extra=1)  # a causal window sees one frame more: its first output frame is dropped
    rows, cols = h.slices(H), w.slices(W)
    return {(k, i, j): (ts, hs, ws) for k, ts in enumerate(times) for i, hs in enumerate(rows)
            for j, ws in enumerate(cols)}


def _compute(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, plan: dict, axis) -> dict:
    """{piece: fn(x[piece])}, here or split across `axis`'s processes (piece n on process n mod K)."""
    pieces = list(plan)

    def piece(p: Piece) -> torch.Tensor:
        ts, hs, ws = plan[p]
        return x[:, :, ts, hs, ws]

    if axis is None or axis.world_size == 1:
        return {p: fn(piece(p)) for p in pieces}
    import torch.distributed as dist

    K, out = axis.world_size, {}
    for start in range(0, len(pieces), K):  # one round: a piece per process (the last round may have fewer)
        mine = start + axis.rank
        y = fn(piece(pieces[mine])) if mine < len(pieces) else torch.zeros((0,) * 5, dtype=x.dtype, device=x.device)
        shape = torch.tensor(list(y.shape), device=x.device)
        shapes = [torch.empty_like(shape) for _ in range(K)]
        dist.all_gather(shapes, shape, group=axis.group)
        shapes = [tuple(int(v) for v in s) for s in shapes]
        padded = torch.zeros([max(s[d] for s in shapes) for d in range(5)], dtype=y.dtype, device=y.device)
        padded[tuple(slice(0, n) for n in y.shape)] = y
        got = [torch.empty_like(padded) for _ in range(K)]
        dist.all_gather(got, padded, group=axis.group)
        for r, (g, s) in enumerate(zip(got, shapes)):
            if start + r < len(pieces):
                out[pieces[start + r]] = g[tuple(slice(0, n) for n in s)]
    return out


def _assemble(raw: dict, t: _Axis, h: _Axis, w: _Axis, size: tuple[int, int, int]) -> torch.Tensor:
    """Blend and crop the pieces into `[B, C, *size]` (size: output frames, height, width)."""
    windows = sorted({k for k, _, _ in raw})
    n_rows, n_cols = 1 + max(i for _, i, _ in raw), 1 + max(j for _, _, j in raw)
    chunks = []
    for k in windows:
        if not (h.active or w.active):
            chunk = raw[(k, 0, 0)]
        else:
            above: list[torch.Tensor | None] = [None] * n_cols
            lines = []
            for i in range(n_rows):
                row: list[torch.Tensor] = []
                for j in range(n_cols):
                    tile = raw[(k, i, j)]
                    if above[j] is not None:
                        tile = _ramp_blend(above[j], tile, h.blend, dim=3)
                    if row:
                        tile = _ramp_blend(row[-1], tile, w.blend, dim=4)
                    row.append(tile)
                lines.append(torch.cat([tile[:, :, :, : h.crop, : w.crop] for tile in row], dim=4))
                above = row
            chunk = torch.cat(lines, dim=3)
        chunks.append(chunk[:, :, :, : size[1], : size[2]])
    if not t.active:
        return chunks[0][:, :, : size[0]]
    kept, prev = [], None
    for k, chunk in enumerate(chunks):
        if k > 0:
            chunk = _ramp_blend(prev, chunk[:, :, 1:], t.blend, dim=2)  # the causal frame dropped, then faded in
        kept.append(chunk[:, :, : t.crop + (1 if k == 0 else 0)])
        prev = chunk
    return torch.cat(kept, dim=2)[:, :, : size[0]]


def _axes(tiles: Tiles, shape, *, latent_in: bool, r: int, tr: int) -> tuple[_Axis, _Axis, _Axis]:
    """The three axes of a decode (`latent_in`) or an encode of input `shape [B, C, T, H, W]`."""
    _, _, T, H, W = shape
    if latent_in:  # windows in latents, blends and crops in pixels/frames
        wt, st, wh, sh, ww, sw = (tiles.frames // tr, tiles.stride_frames // tr, tiles.height // r,
                                  tiles.stride_height // r, tiles.width // r, tiles.stride_width // r)
        bt, ct = tiles.frames - tiles.stride_frames, tiles.stride_frames
        bh, ch = tiles.height - tiles.stride_height, tiles.stride_height
        bw, cw = tiles.width - tiles.stride_width, tiles.stride_width
    else:  # windows in pixels/frames, blends and crops in latents
        wt, st, wh, sh, ww, sw = (tiles.frames, tiles.stride_frames, tiles.height, tiles.stride_height,
                                  tiles.width, tiles.stride_width)
        bt, ct = tiles.frames // tr - tiles.stride_frames // tr, tiles.stride_frames // tr
        bh, ch = tiles.height // r - tiles.stride_height // r, tiles.stride_height // r
        bw, cw = tiles.width // r - tiles.stride_width // r, tiles.stride_width // r
    spatial = tiles.spatial and (W > ww or H > wh)
    t = _Axis(wt, st, bt, ct, tiles.temporal and T > wt)
    return t, _Axis(wh, sh, bh, ch, spatial), _Axis(ww, sw, bw, cw, spatial)


def tiled_decode(vae, z: torch.Tensor, tiles: Tiles | None = None, *, axis=None) -> torch.Tensor:
    """Unscaled latents `[B, C, T', H', W']` -> video `[B, 3, 1 + tr (T'-1), r H', r W']`, piece by piece."""
    tiles = tiles or Tiles.of(vae, spatial=True)
    r, tr = int(vae.config.spatial_compression_ratio), int(vae.config.temporal_compression_ratio)
    t, h, w = _axes(tiles, z.shape, latent_in=True, r=r, tr=tr)
    plan = _plan(z, t, h, w)
    raw = _compute(lambda piece: vae.decoder(vae.post_quant_conv(piece)), z, plan, axis)
    _, _, T, H, W = z.shape
    return _assemble(raw, t, h, w, ((T - 1) * tr + 1, H * r, W * r))


def tiled_encode(vae, x: torch.Tensor, tiles: Tiles | None = None, *, axis=None) -> torch.Tensor:
    """Video `[B, 3, T, H, W]` -> the posterior's moments `[B, 2C, T', H', W']` (diffusers' `_encode`)."""
    tiles = tiles or Tiles.of(vae, spatial=True)
    r, tr = int(vae.config.spatial_compression_ratio), int(vae.config.temporal_compression_ratio)
    t, h, w = _axes(tiles, x.shape, latent_in=False, r=r, tr=tr)
    plan = _plan(x, t, h, w)
    raw = _compute(lambda piece: vae.quant_conv(vae.encoder(piece)), x, plan, axis)
    _, _, T, H, W = x.shape
    return _assemble(raw, t, h, w, ((T - 1) // tr + 1, H // r, W // r))
