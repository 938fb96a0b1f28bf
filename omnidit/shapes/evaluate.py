"""Prompt adherence: score frames against a SceneSpec, attribute by attribute.

Pipeline (pure numpy, no learned models):
1. Background: the palette background nearest to the median pixel.
2. Pixels: each pixel is explained as a mix of the measured background b and one object
   colour c, p ~ b + alpha (c - b); the colour with the smallest residual wins and the pixel
   is that object's iff alpha >= 0.5. Anti-aliased and blurred edges are such mixes, so they
   are attributed to the right colour instead of a third palette entry "in between".
3. Blobs: 4-connected components of equal colour (label propagation with pointer jumping).
4. Static attributes are read at the middle frame, where spec.py puts an object at its
   named position and nominal size. Shape: an apex-up triangle has a strongly skewed row
   profile (skewness ~ -0.57, symmetric shapes 0); squares, circles and crosses (the LoRA's
   new word, spec.NEW_SHAPES) differ in fill ratio, soft area / (tallest column x widest row):
   1.0, 0.785 and 0.556. Sums of soft coverage, not pixel
   extents, keep both robust to blur, noise and dimmed colours. Size: the extent implied by
   area and shape, nearest canonical size. Position: the bounding-box centre's nearest grid
   anchor (its cell).
5. Motion: each mid-frame blob is tracked (same colour, nearest centroid) through up to
   TRACK_FRAMES frames; a direction needs a net centroid displacement along it, growing /
   shrinking an area ratio between the first and last frames.
Spec objects are matched to blobs by colour first, then by agreement on the other
attributes, so a wrong colour does not also count as a wrong shape or position.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from omnidit.shapes.grammar import parse_prompt
from omnidit.shapes.spec import (
    BACKGROUNDS,
    COLOURS,
    DIRECTIONS,
    FILL_RATIO,
    MOTION_TRAVEL,
    POSITIONS,
    SIZE_EXTENT,
    SceneSpec,
)

ATTRIBUTES = ("background", "count", "colour", "shape", "position", "size", "motion")
MIN_BLOB = 0.004  # fraction of the frame: an object at mid-clip (small triangle: 0.016)
MIN_TRACK_BLOB = 0.001  # fraction of the frame: shrunk or partly off-screen objects
TRIANGLE_SKEW = 0.2  # |row-profile skewness| of a triangle (~0.57; blur lowers it), else ~0
SQUARE_FILL = 0.89  # fill ratio splitting squares (~1.0) from circles (~0.785)
CROSS_FILL = 0.75  # ... and circles from crosses (0.556; the VAE's decoded crosses ~0.57-0.75)
MOTION_MIN = 0.35 * MOTION_TRAVEL  # net displacement a direction needs
GROWTH_MIN = 1.6  # last/first area ratio for growing (1/x for shrinking); true ratio ~5.4
TRACK_FRAMES = 9
MAX_JUMP = 0.25  # largest centroid step between tracked frames
SOFT_FLOOR = 0.2  # coverage below this counts as background when measuring a blob's shape
PEAK_OF = 2  # column / row peaks are the mean of this many fullest ones

_OBJ_NAMES = list(COLOURS)
_OBJ_RGB = np.array([COLOURS[c] for c in _OBJ_NAMES], dtype=np.float32)  # [K, 3]
_ANCHOR_NAMES = list(POSITIONS)
_ANCHORS = np.array([POSITIONS[p] for p in _ANCHOR_NAMES])  # [9, 2]


@dataclass(frozen=True)
class Blob:
    """A connected region of one colour in one frame; coordinates normalised to [0, 1]."""

    frame: int  # index into the frames given to find_blobs
    colour: str
    area: int  # pixels (coverage >= 0.5)
    cx: float  # centroid
    cy: float
    bx: float  # bounding-box centre
    by: float
    width: int  # bounding box, pixels
    height: int
    side: int  # frame side, pixels (max of H, W)
    mass: float  # summed coverage around the blob (sub-pixel area)
    col_peak: float  # summed coverage of the fullest columns / rows: the object's height /
    row_peak: float  # width where it is tallest / widest, robust to ragged, noisy edges
    skew: float  # skewness of the row profile: about -0.57 for an apex-up triangle, 0 if symmetric

    @property
    def fill(self) -> float:
        """mass / (height * width): square 1, circle pi/4, cross 5/9, apex-up triangle 1/2."""
        return self.mass / max(self.col_peak * self.row_peak, 1e-6)

    @property
    def shape(self) -> str:
        if abs(self.skew) >= TRIANGLE_SKEW:
            return "triangle"
        if self.fill >= SQUARE_FILL:
            return "square"
        return "circle" if self.fill >= CROSS_FILL else "cross"

    @property
    def size(self) -> str:
        extent = math.sqrt(self.mass / FILL_RATIO[self.shape]) / self.side
        return min(SIZE_EXTENT, key=lambda s: abs(math.log(extent / SIZE_EXTENT[s])))

    @property
    def position(self) -> str:
        d = ((_ANCHORS - (self.bx, self.by)) ** 2).sum(1)
        return _ANCHOR_NAMES[int(np.argmin(d))]


def _as_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] (or [H, W, 3]), got {frames.dtype} {frames.shape}")
    return frames


def background_of(frames: np.ndarray) -> tuple[str, np.ndarray]:
    """(nearest palette background name, measured background RGB)."""
    rgb = np.median(frames.reshape(-1, 3), axis=0).astype(np.float32)
    name = min(BACKGROUNDS, key=lambda b: float(((np.array(BACKGROUNDS[b]) - rgb) ** 2).sum()))
    return name, rgb


def classify_pixels(frames: np.ndarray, bg_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the best-explaining object colour and its coverage: ids [T, H, W] int
    (k + 1 = _OBJ_NAMES[k], 0 = plain background) and cover [T, H, W] float in [0, 1.25]."""
    keep = np.abs(_OBJ_RGB - bg_rgb).max(1) > 40  # a colour equal to the background has no mixing line
    d = _OBJ_RGB[keep] - bg_rgb  # [K, 3] mixing directions
    d2 = (d * d).sum(1)  # [K]
    q = frames.reshape(-1, 3).astype(np.float32) - bg_rgb  # [P, 3]
    q2 = (q * q).sum(1)  # [P]
    # alpha >= 0.5 needs |q| >= 0.5 |d|; pixels nearer the background than that are skipped.
    near = np.flatnonzero(q2 >= 0.2 * d2.min())  # [P']
    proj = q[near] @ d.T  # [P', K]
    alpha = np.clip(proj / d2, 0.0, 1.25)  # [P', K]
    resid = q2[near, None] - 2 * alpha * proj + alpha**2 * d2  # [P', K] squared residual
    best = resid.argmin(1)  # [P']
    ids = np.zeros(q.shape[0], dtype=np.int64)
    cover = np.zeros(q.shape[0], dtype=np.float32)
    ids[near] = np.flatnonzero(keep)[best] + 1
    cover[near] = alpha[np.arange(near.size), best]
    return ids.reshape(frames.shape[:-1]), cover.reshape(frames.shape[:-1])


def label_components(classes: np.ndarray) -> np.ndarray:
    """4-connected components of equal non-zero class: [T, H, W] labels (0 = none), where a
    label is 1 + the flat index of the component's last pixel."""
    fg = classes > 0
    lab = np.where(fg, np.arange(1, classes.size + 1).reshape(classes.shape), 0)
    link_x = fg[:, :, 1:] & (classes[:, :, 1:] == classes[:, :, :-1])  # [T, H, W-1]
    link_y = fg[:, 1:, :] & (classes[:, 1:, :] == classes[:, :-1, :])  # [T, H-1, W]
    while True:
        new = lab.copy()
        np.maximum(new[:, :, :-1], np.where(link_x, lab[:, :, 1:], 0), out=new[:, :, :-1])
        np.maximum(new[:, :, 1:], np.where(link_x, lab[:, :, :-1], 0), out=new[:, :, 1:])
        np.maximum(new[:, :-1, :], np.where(link_y, lab[:, 1:, :], 0), out=new[:, :-1, :])
        np.maximum(new[:, 1:, :], np.where(link_y, lab[:, :-1, :], 0), out=new[:, 1:, :])
        flat = new.reshape(-1)
        on = flat > 0
        flat[on] = flat[flat[on] - 1]  # pointer jump: a label names a pixel of the same component
        if np.array_equal(new, lab):
            return lab
        lab = new


def _profile(soft: np.ndarray) -> dict[str, float]:
    """Mass, column / row peaks and row skewness of a soft-coverage window [h, w]."""
    cols, rows = soft.sum(0), soft.sum(1)  # [w], [h]
    mass = max(float(rows.sum()), 1e-6)
    y = np.arange(rows.size) - (rows * np.arange(rows.size)).sum() / mass  # [h] offsets from the centroid
    var = max(float((rows * y**2).sum() / mass), 1e-6)
    return {
        "mass": mass,
        "col_peak": float(np.sort(cols)[-PEAK_OF:].mean()),
        "row_peak": float(np.sort(rows)[-PEAK_OF:].mean()),
        "skew": float((rows * y**3).sum() / mass / var**1.5),
    }


def find_blobs(frames: np.ndarray, bg_rgb: np.ndarray, min_frac: float = MIN_TRACK_BLOB) -> list[list[Blob]]:
    """Blobs of at least min_frac of the frame, per frame, largest first."""
    t_n, h, w, _ = frames.shape
    ids, cover = classify_pixels(frames, bg_rgb)
    classes = np.where(cover >= 0.5, ids, 0)  # [T, H, W]
    lab = label_components(classes)
    t, y, x = np.nonzero(lab)
    out: list[list[Blob]] = [[] for _ in range(t_n)]
    if t.size == 0:
        return out
    _, inv = np.unique(lab[t, y, x], return_inverse=True)
    area = np.bincount(inv)
    order = np.argsort(inv, kind="stable")
    starts = np.concatenate([[0], np.cumsum(area)[:-1]])
    xs, ys = x[order], y[order]
    x0, x1 = np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts)
    y0, y1 = np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts)
    sx, sy = np.bincount(inv, weights=x), np.bincount(inv, weights=y)
    first = order[starts]
    side = max(h, w)
    for k in np.flatnonzero(area >= min_frac * h * w):
        f = int(t[first[k]])
        cid = int(classes[f, y[first[k]], x[first[k]]])
        # Soft coverage of this colour in the bounding box grown by a pixel, relative to the
        # blob's own interior level (a dimmer or washed-out object is still fully "inside");
        # faint pixels are dropped so background noise does not add up along the columns.
        win = (f, slice(max(y0[k] - 1, 0), y1[k] + 2), slice(max(x0[k] - 1, 0), x1[k] + 2))
        soft = np.where(ids[win] == cid, cover[win], 0.0)  # [h', w']
        soft = np.minimum(soft / min(np.percentile(soft[soft >= 0.5], 75), 1.0), 1.0)
        soft[soft < SOFT_FLOOR] = 0.0
        out[f].append(
            Blob(
                frame=f,
                colour=_OBJ_NAMES[cid - 1],
                **_profile(soft),
                area=int(area[k]),
                cx=float((sx[k] / area[k] + 0.5) / w),
                cy=float((sy[k] / area[k] + 0.5) / h),
                bx=float((x0[k] + x1[k] + 1) / 2 / w),
                by=float((y0[k] + y1[k] + 1) / 2 / h),
                width=int(x1[k] - x0[k] + 1),
                height=int(y1[k] - y0[k] + 1),
                side=side,
            )
        )
    for blobs in out:
        blobs.sort(key=lambda b: -b.area)
    return out


def _track(start: Blob, blobs: list[list[Blob]], order: list[int]) -> Blob:
    """Follow `start` through the frames in `order`; the last blob reached."""
    cur = start
    for f in order:
        cands = [b for b in blobs[f] if b.colour == cur.colour]
        dist = [math.hypot(b.cx - cur.cx, b.cy - cur.cy) for b in cands]
        if not cands or min(dist) > MAX_JUMP:
            break
        cur = cands[int(np.argmin(dist))]
    return cur


def motion_ok(motion: str, first: Blob, last: Blob) -> bool:
    if motion in DIRECTIONS:
        ux, uy = DIRECTIONS[motion]
        dx, dy = last.cx - first.cx, last.cy - first.cy
        along, across = dx * ux + dy * uy, abs(dx * uy - dy * ux)
        return along >= MOTION_MIN and along >= 2 * across
    ratio = last.area / first.area
    return ratio >= GROWTH_MIN if motion == "growing" else ratio <= 1 / GROWTH_MIN


def detect(frames: np.ndarray) -> tuple[str, list[Blob], list[tuple[Blob, Blob]]]:
    """(background name, objects at the middle frame, (first, last) track ends of each)."""
    frames = _as_frames(frames)
    n = frames.shape[0]
    mid = n // 2
    picked = sorted(set(np.rint(np.linspace(0, n - 1, min(n, TRACK_FRAMES))).astype(int).tolist()) | {mid})
    bg_name, bg_rgb = background_of(frames[picked])
    blobs = find_blobs(frames[picked], bg_rgb)
    m = picked.index(mid)
    objects = [b for b in blobs[m] if b.area >= MIN_BLOB * frames.shape[1] * frames.shape[2]][:6]
    tracks = [
        (_track(b, blobs, list(range(m - 1, -1, -1))), _track(b, blobs, list(range(m + 1, len(picked)))))
        for b in objects
    ]
    return bg_name, objects, tracks


def score(frames: np.ndarray, spec: SceneSpec) -> dict[str, float | None]:
    """Per-attribute adherence in {0, 1}, None where the spec does not constrain it.

    Keys: ATTRIBUTES plus "all" (every applicable attribute right)."""
    frames = _as_frames(frames)
    bg_name, blobs, tracks = detect(frames)
    video = frames.shape[0] > 1
    objs = spec.objects

    def checks(i: int, j: int) -> dict[str, bool]:
        o, b = objs[i], blobs[j]
        out = {"colour": b.colour == o.colour, "shape": b.shape == o.shape}
        if o.position is not None:
            out["position"] = b.position == o.position
        if o.size != "medium":
            out["size"] = b.size == o.size
        if video and o.motion is not None:
            out["motion"] = motion_ok(o.motion, *tracks[j])
        return out

    table = {(i, j): checks(i, j) for i in range(len(objs)) for j in range(len(blobs))}
    best, best_key = None, (-1, -1)
    for assign in itertools.product([*range(len(blobs)), None], repeat=len(objs)):
        used = [j for j in assign if j is not None]
        if len(used) != len(set(used)):
            continue
        results = [table[i, j] for i, j in enumerate(assign) if j is not None]
        key = (sum(r["colour"] for r in results), sum(sum(r.values()) for r in results))
        if key > best_key:
            best, best_key = assign, key

    def attribute(name: str, applies) -> float | None:
        idx = [i for i, o in enumerate(objs) if applies(o)]
        if not idx:
            return None
        return float(all(best[i] is not None and table[i, best[i]][name] for i in idx))

    result: dict[str, float | None] = {
        "background": float(bg_name == spec.background),
        "count": float(len(blobs) == len(objs)),
        "colour": attribute("colour", lambda o: True),
        "shape": attribute("shape", lambda o: True),
        "position": attribute("position", lambda o: o.position is not None),
        "size": attribute("size", lambda o: o.size != "medium"),
        "motion": attribute("motion", lambda o: video and o.motion is not None),
    }
    result["all"] = float(all(v == 1.0 for v in result.values() if v is not None))
    return result


def score_prompt(frames: np.ndarray, prompt: str) -> dict[str, float | None]:
    """Parse `prompt` (unknown words raise ValueError) and score frames against it."""
    return score(frames, parse_prompt(prompt))


def evaluate_many(pairs) -> dict[str, float | None]:
    """Accuracy per attribute (and "all") over (frames, spec) pairs, averaged over the pairs
    where the attribute applies; None where it never does."""
    totals: dict[str, list[float]] = {k: [] for k in (*ATTRIBUTES, "all")}
    for frames, spec in pairs:
        for k, v in score(frames, spec).items():
            if v is not None:
                totals[k].append(v)
    return {k: (float(np.mean(v)) if v else None) for k, v in totals.items()}
