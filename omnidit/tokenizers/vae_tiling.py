"""Tiled (and parallel) decode and encode for HunyuanVideo's causal video VAEs (1.0 and 1.5).

A video is cut into overlapping windows in time and, within each, overlapping tiles in space;
each piece goes through the VAE alone (bounded activation memory), and neighbours are blended
with linear ramps over their overlap, in raster order (each tile with its already-blended upper
and left neighbours; each time window with the already-blended previous one), then cropped to the
stride. Each VAE's geometry is one settings class: `Tiles` is diffusers' `AutoencoderKLHunyuanVideo`
with `enable_tiling()` (tiles and strides in pixels/frames, time windows too), `Tiles15` is
`AutoencoderKLHunyuanVideo15`'s (pixel and latent tile sizes and an overlap fraction, space only);
with the same settings the output is diffusers' up to float rounding. `tiles_of(vae)` picks.

Parallel: the pieces are independent, so with an `Axis` of K processes (omnidit/parallel/state.py)
piece n is computed by process n mod K, the pieces are all-gathered (padded to a common shape, so
it works on gloo and NCCL alike) and every process blends the same result.

    video = tiled_decode(vae, z, tiles_of(vae))                # one process
    video = tiled_decode(vae, z, tiles_of(vae), axis=st.world)   # split across the processes
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

Piece = tuple[int, int, int]  # (time window, tile row, tile column)


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

    def axes(self, shape, *, latent_in: bool, r: int, tr: int) -> tuple[_Axis, _Axis, _Axis]:
        """The (time, height, width) axes of a decode (`latent_in`) or an encode of input `shape [B, C, T, H, W]`."""
        _, _, T, H, W = shape
        if latent_in:  # windows in latents, blends and crops in pixels/frames
            wt, st, wh, sh, ww, sw = (self.frames // tr, self.stride_frames // tr, self.height // r,
                                      self.stride_height // r, self.width // r, self.stride_width // r)
            bt, ct = self.frames - self.stride_frames, self.stride_frames
            bh, ch = self.height - self.stride_height, self.stride_height
            bw, cw = self.width - self.stride_width, self.stride_width
        else:  # windows in pixels/frames, blends and crops in latents
            wt, st, wh, sh, ww, sw = (self.frames, self.stride_frames, self.height, self.stride_height,
                                      self.width, self.stride_width)
            bt, ct = self.frames // tr - self.stride_frames // tr, self.stride_frames // tr
            bh, ch = self.height // r - self.stride_height // r, self.stride_height // r
            bw, cw = self.width // r - self.stride_width // r, self.stride_width // r
        spatial = self.spatial and (W > ww or H > wh)
        t = _Axis(wt, st, bt, ct, self.temporal and T > wt)
        return t, _Axis(wh, sh, bh, ch, spatial), _Axis(ww, sw, bw, cw, spatial)


@dataclass(frozen=True)
class Tiles15:
    """HunyuanVideo-1.5's tile settings (diffusers' `AutoencoderKLHunyuanVideo15` fields `tile_sample_min_*`,
    `tile_latent_min_*`, `tile_overlap_factor`): spatial tiles only, every frame in each tile."""

    height: int = 256
    width: int = 256
    latent_height: int = 16
    latent_width: int = 16
    overlap: float = 0.25  # the fraction of a tile blended with its neighbour
    spatial: bool = True  # diffusers' use_tiling

    def __post_init__(self) -> None:
        for name in ("height", "width", "latent_height", "latent_width"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"tile {name} must be an integer >= 1, got {v!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) or not 0 <= self.overlap < 1:
            raise ValueError(f"tile overlap must be a number in [0, 1), got {self.overlap!r}")

    @classmethod
    def of(cls, vae, *, spatial: bool | None = None) -> Tiles15:
        """The settings a diffusers 1.5 VAE holds (`enable_tiling(...)` sets them); `spatial` defaults to its use_tiling."""
        return cls(vae.tile_sample_min_height, vae.tile_sample_min_width, vae.tile_latent_min_height,
                   vae.tile_latent_min_width, float(vae.tile_overlap_factor),
                   spatial=vae.use_tiling if spatial is None else spatial)

    def _side(self, name: str, sample: int, latent: int, *, latent_in: bool, r: int) -> _Axis:
        """One spatial axis, with diffusers' rounding: stride int(window (1 - f)), blend int(tile f)."""
        f = self.overlap
        window, other = (latent, sample) if latent_in else (sample, latent)  # input tile, output tile
        stride, blend = int(window * (1 - f)), int(other * f)
        crop = other - blend  # what each tile keeps: it must be the input stride, in output units
        if stride < 1 or (crop != stride * r if latent_in else crop * r != stride):
            raise ValueError(
                f"tile settings {name}={sample}, latent_{name}={latent}, overlap={f} do not cut a {r}x VAE's "
                f"{'decode' if latent_in else 'encode'} evenly (input stride {stride}, kept {crop} per tile); "
                f"use {name} = {r} * latent_{name} and an overlap that makes both whole numbers, e.g. 0.25")
        return _Axis(window, stride, blend, crop, True)

    def axes(self, shape, *, latent_in: bool, r: int, tr: int) -> tuple[_Axis, _Axis, _Axis]:
        """The (time, height, width) axes of a decode (`latent_in`) or an encode of input `shape [B, C, T, H, W]`."""
        _, _, _, H, W = shape
        h = self._side("height", self.height, self.latent_height, latent_in=latent_in, r=r)
        w = self._side("width", self.width, self.latent_width, latent_in=latent_in, r=r)
        spatial = self.spatial and (W > w.window or H > h.window)
        no_time = _Axis(1, 1, 0, 1, False)  # the 1.5 VAE never cuts time
        return no_time, replace(h, active=spatial), replace(w, active=spatial)


def tiles_of(vae, *, spatial: bool | None = None) -> Tiles | Tiles15:
    """The tile settings of either diffusers VAE (the 1.5 one is the one with an overlap factor)."""
    cls = Tiles15 if hasattr(vae, "tile_overlap_factor") else Tiles
    return cls.of(vae, spatial=spatial)


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


def _space(raw: dict, k: int, h: _Axis, w: _Axis) -> torch.Tensor:
    """Blend and crop temporal window k's tiles `{(k, i, j): tile}` into one chunk `[B, C, t, H, W]`."""
    if not (h.active or w.active):
        return raw[(k, 0, 0)]
    n_rows, n_cols = 1 + max(i for _, i, _ in raw), 1 + max(j for _, _, j in raw)
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
    return torch.cat(lines, dim=3)


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, t: _Axis, h: _Axis, w: _Axis,
           size: tuple[int, int, int], axis) -> torch.Tensor:
    """`fn` piece by piece over `x`, blended into `[B, C, *size]` (size: output frames, height, width).

    One temporal window at a time: its tiles are computed (split across `axis`'s processes), blended
    in space, faded into the previous window and written into the output, so what is alive at once is
    the output plus one window's tiles, not every tile of the video (at 129 frames, 11 windows)."""
    plan = _plan(x, t, h, w)
    out, filled, prev = None, 0, None
    for k in sorted({k for k, _, _ in plan}):
        raw = _compute(fn, x, {p: s for p, s in plan.items() if p[0] == k}, axis)
        chunk = _space(raw, k, h, w)[:, :, :, : size[1], : size[2]]
        del raw
        if t.active and k > 0:
            chunk = _ramp_blend(prev, chunk[:, :, 1:], t.blend, dim=2)  # the causal frame dropped, then faded in
        keep = chunk[:, :, : t.crop + (1 if k == 0 else 0)] if t.active else chunk
        if out is None:
            out = keep.new_empty((*keep.shape[:2], size[0], *keep.shape[3:]))  # [B, C, F, H, W]
        n = min(keep.shape[2], size[0] - filled)
        if n > 0:
            out[:, :, filled: filled + n] = keep[:, :, :n]
            filled += n
        prev = chunk
    return out


def tiled_decode(vae, z: torch.Tensor, tiles: Tiles | Tiles15 | None = None, *, axis=None) -> torch.Tensor:
    """Unscaled latents `[B, C, T', H', W']` -> video `[B, 3, 1 + tr (T'-1), r H', r W']`, piece by piece."""
    tiles = tiles or tiles_of(vae, spatial=True)
    r, tr = int(vae.config.spatial_compression_ratio), int(vae.config.temporal_compression_ratio)
    t, h, w = tiles.axes(z.shape, latent_in=True, r=r, tr=tr)
    post = getattr(vae, "post_quant_conv", None)  # 1.0 has one; 1.5's decoder takes the latents as they are
    _, _, T, H, W = z.shape
    return _tiled(lambda piece: vae.decoder(post(piece) if post is not None else piece), z, t, h, w,
                  ((T - 1) * tr + 1, H * r, W * r), axis)


def tiled_encode(vae, x: torch.Tensor, tiles: Tiles | Tiles15 | None = None, *, axis=None) -> torch.Tensor:
    """Video `[B, 3, T, H, W]` -> the posterior's moments `[B, 2C, T', H', W']` (diffusers' `_encode`)."""
    tiles = tiles or tiles_of(vae, spatial=True)
    r, tr = int(vae.config.spatial_compression_ratio), int(vae.config.temporal_compression_ratio)
    t, h, w = tiles.axes(x.shape, latent_in=False, r=r, tr=tr)
    quant = getattr(vae, "quant_conv", None)  # 1.0 has one; 1.5's encoder gives the moments itself
    _, _, T, H, W = x.shape
    return _tiled(lambda piece: quant(vae.encoder(piece)) if quant is not None else vae.encoder(piece), x, t, h, w,
                  ((T - 1) // tr + 1, H // r, W // r), axis)
