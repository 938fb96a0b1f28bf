"""The shapes world's scene specification: vocabulary, geometry constants, dataclasses.

Every number that defines what a prompt *means* lives here, once; the renderer, the prompt
grammar and the evaluator all read these constants.

Conventions
- Canvas coordinates are normalised to [0, 1]^2: x grows to the right, y grows DOWN (image
  rows), so "up" is -y. Sizes are fractions of the frame side.
- An object's `center` is the centre of its bounding box and its *extent* is the side of that
  box: circle diameter, square side, the base and height of an apex-up isosceles triangle, or
  the span of a cross (a plus sign: two bars of width extent * CROSS_ARM, centred).
  Area / extent^2 is `FILL_RATIO[shape]` (what the evaluator measures shape with).
- Vocabulary the base model never saw: `NEW_SHAPES` (the cross) are valid in a spec, drawn
  and scored, but training scenes use `SHAPES` unless asked otherwise (world.py), so the base
  model's data and evals stay as they were; a LoRA teaches the new word (`omnidit train lora`).
- Named positions are the cells of a 3x3 grid; `POSITIONS[name]` is the cell's anchor.
  Training scenes jitter a named centre by up to +-`POSITION_JITTER` per axis (well inside
  the cell's half-width 0.125); an unnamed object sits anywhere in `FREE_RANGE`^2.
- Time: a clip of F frames samples phases t = f / (F - 1) in [0, 1]; a single frame (an
  image) is phase 0.5. The spec describes the object at mid-clip (t = 0.5): a moving object
  passes its `center` at mid-clip and travels `MOTION_TRAVEL` over the whole clip, so it
  starts MOTION_TRAVEL / 2 *behind* its named position; a growing (shrinking) object scales
  linearly from 0.6x to 1.4x (1.4x to 0.6x) of its size, 1.0x at mid-clip. Objects may leave
  the canvas partly near the clip's ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Object colours (sRGB). Chosen to be far apart, also along the mixing lines with every
# background, so anti-aliased or blurred edges stay attributable to the right colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 80, 240),
    "yellow": (250, 220, 30),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
    "white": (255, 255, 255),
    "cyan": (30, 220, 230),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")  # the base model's shapes
NEW_SHAPES: tuple[str, ...] = ("cross",)  # words for a LoRA to teach: off in training scenes by default
ALL_SHAPES: tuple[str, ...] = SHAPES + NEW_SHAPES
SIZES: tuple[str, ...] = ("small", "medium", "large")  # "medium" = no size word in the prompt
SIZE_EXTENT: dict[str, float] = {"small": 0.18, "medium": 0.26, "large": 0.36}
FILL_RATIO: dict[str, float] = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "cross": 5 / 9}
CROSS_ARM = 1 / 3  # a cross's bar width, fraction of its extent (area 2 * 1/3 - 1/9 = 5/9 of the box)

POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top": (0.5, 0.25),
    "top right": (0.75, 0.25),
    "left": (0.25, 0.5),
    "center": (0.5, 0.5),
    "right": (0.75, 0.5),
    "bottom left": (0.25, 0.75),
    "bottom": (0.5, 0.75),
    "bottom right": (0.75, 0.75),
}
POSITION_JITTER = 0.04
FREE_RANGE = (0.22, 0.78)  # centres of unnamed objects: a large one still fits at mid-clip

MOTIONS: tuple[str, ...] = ("left", "right", "up", "down", "growing", "shrinking")
DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
MOTION_TRAVEL = 0.32  # displacement over the whole clip, fraction of the frame side
SCALE_RANGE = (0.6, 1.4)  # growing: first -> last frame scale (shrinking: reversed)
MIN_GAP = 0.04  # sampled/placed objects keep at least this gap between bounding boxes
MAX_OBJECTS = 3


def frame_phases(frames: int) -> np.ndarray:
    """Phase t in [0, 1] of each frame; a single frame is mid-clip (0.5)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if frames == 1:
        return np.array([0.5])
    return np.linspace(0.0, 1.0, frames)


def _check(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, got {value!r}")


@dataclass(frozen=True)
class ObjectSpec:
    """One object. `center` defaults to the named position's anchor; one of them is required."""

    shape: str
    colour: str
    size: str = "medium"
    position: str | None = None
    center: tuple[float, float] | None = None
    motion: str | None = None

    def __post_init__(self) -> None:
        _check("shape", self.shape, ALL_SHAPES)
        _check("colour", self.colour, COLOURS)
        _check("size", self.size, SIZES)
        if self.position is not None:
            _check("position", self.position, POSITIONS)
        if self.motion is not None:
            _check("motion", self.motion, MOTIONS)
        center = self.center
        if center is None:
            if self.position is None:
                raise ValueError("ObjectSpec needs a center or a named position")
            center = POSITIONS[self.position]
        cx, cy = (float(c) for c in center)
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
            raise ValueError(f"center must lie in [0, 1]^2, got {center!r}")
        object.__setattr__(self, "center", (cx, cy))

    @property
    def extent(self) -> float:
        return SIZE_EXTENT[self.size]

    def semantics(self) -> tuple:
        """What a prompt says about the object (no exact centre)."""
        return (self.shape, self.colour, self.size, self.position, self.motion)

    def state(self, phases: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cx, cy, extent) at each phase in [0, 1], per the module's motion convention."""
        t = np.asarray(phases, dtype=np.float64)
        cx = np.full_like(t, self.center[0])
        cy = np.full_like(t, self.center[1])
        scale = np.ones_like(t)
        if self.motion in DIRECTIONS:
            dx, dy = DIRECTIONS[self.motion]
            cx = cx + (t - 0.5) * MOTION_TRAVEL * dx
            cy = cy + (t - 0.5) * MOTION_TRAVEL * dy
        elif self.motion is not None:
            lo, hi = SCALE_RANGE if self.motion == "growing" else SCALE_RANGE[::-1]
            scale = lo + (hi - lo) * t
        return cx, cy, self.extent * scale

    def to_dict(self) -> dict:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "position": self.position,
            "center": list(self.center),
            "motion": self.motion,
        }


@dataclass
class SceneSpec:
    """A background and 1..MAX_OBJECTS objects, validated on construction."""

    background: str
    objects: list[ObjectSpec] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check("background", self.background, BACKGROUNDS)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"objects must hold 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        seen: set[tuple[str, str]] = set()
        named: set[str] = set()
        for obj in self.objects:
            if obj.colour == self.background:
                raise ValueError(
                    f"colour {obj.colour!r} of the {obj.shape} equals the background colour; "
                    f"an object must differ from the background"
                )
            if (obj.colour, obj.shape) in seen:
                raise ValueError(f"two objects are both a {obj.colour} {obj.shape}; they must differ in colour or shape")
            seen.add((obj.colour, obj.shape))
            if obj.position is not None:
                if obj.position in named:
                    raise ValueError(f"two objects share the position {obj.position!r}; positions must differ")
                named.add(obj.position)

    def semantics(self) -> tuple:
        """Order-free meaning of the scene: equal for a spec and parse(prompt_for(spec))."""
        return (self.background, tuple(sorted((o.semantics() for o in self.objects), key=repr)))

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> SceneSpec:
        objs = [ObjectSpec(**{**o, "center": tuple(o["center"]) if o.get("center") else None}) for o in d["objects"]]
        return cls(background=d["background"], objects=objs)


def _collision_phases(objects: list[ObjectSpec]) -> np.ndarray:
    return np.linspace(0.0, 1.0, 9) if any(o.motion for o in objects) else np.array([0.5])


def overlaps(a: ObjectSpec, b: ObjectSpec, phases: np.ndarray) -> bool:
    """Whether the two bounding boxes, grown by MIN_GAP, touch at any of the phases."""
    ax, ay, ae = a.state(phases)
    bx, by, be = b.state(phases)
    reach = (ae + be) / 2 + MIN_GAP
    return bool(np.any((np.abs(ax - bx) < reach) & (np.abs(ay - by) < reach)))


def any_overlap(objects: list[ObjectSpec]) -> bool:
    phases = _collision_phases(objects)
    return any(overlaps(a, b, phases) for i, a in enumerate(objects) for b in objects[i + 1 :])


def random_free_center(rng: np.random.Generator) -> tuple[float, float]:
    lo, hi = FREE_RANGE
    return (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
