"""Spec <-> prompt: canonical and paraphrased prompt generation, and a tolerant parser.

Canonical grammar (what `prompt_for(spec, paraphrase=False)` writes, deterministically):
    one object:  "a [small|large] <colour> <shape> [<position>] on a <bg> background[, <motion>]"
    several:     "<object> [<position>] [<motion>] and <object> ... on a <bg> background"
with <position> one of "at the top left", "at the top", "on the left", "in the center", ...
and <motion> one of "moving left|right|up|down", "growing", "shrinking".

The parser reads words, not templates: it maps synonyms to meanings (size, colour, shape,
position word, motion, background) and skips glue words, so every paraphrase written here
and reasonable user wording parse to the same spec. Position and motion phrases attach to
the nearest preceding object (or the next one when nothing precedes them).
"""

from __future__ import annotations

import re

import numpy as np

from omnidit.shapes.spec import (
    ALL_SHAPES,
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    POSITIONS,
    ObjectSpec,
    SceneSpec,
    any_overlap,
    random_free_center,
)

# --- words -> meaning --------------------------------------------------------------------
SIZE_WORDS = {"small": "small", "tiny": "small", "little": "small", "medium": "medium", "large": "large", "big": "large"}
COLOUR_WORDS = {**{c: c for c in COLOURS}, "violet": "purple", "aqua": "cyan"}
BACKGROUND_WORDS = {"black": "black", "white": "white", "gray": "gray", "grey": "gray"}
SHAPE_WORDS = {
    "circle": "circle", "disc": "circle", "disk": "circle", "ball": "circle",
    "square": "square", "box": "square", "block": "square",
    "triangle": "triangle",
    "cross": "cross", "plus": "cross",  # NEW_SHAPES: parsed always, sampled only when asked
}  # fmt: skip
POSITION_WORDS = {
    "top": ("v", "top"), "upper": ("v", "top"), "bottom": ("v", "bottom"), "lower": ("v", "bottom"),
    "left": ("h", "left"), "right": ("h", "right"),
    "center": ("c", "center"), "centre": ("c", "center"), "middle": ("c", "center"),
    "centered": ("c", "center"), "centred": ("c", "center"),
}  # fmt: skip
MOTION_VERBS = frozenset(
    "moving moves move going goes drifting drifts sliding slides heading heads travelling traveling travels".split()
)
DIRECTION_WORDS = {
    "left": "left", "right": "right", "up": "up", "upward": "up", "upwards": "up",
    "down": "down", "downward": "down", "downwards": "down",
}  # fmt: skip
MOTION_WORDS = {
    "growing": "growing", "grows": "growing", "expanding": "growing", "expands": "growing",
    "shrinking": "shrinking", "shrinks": "shrinking", "contracting": "shrinking",
    "rising": "up", "rises": "up", "falling": "down", "falls": "down", "sinking": "down",
}  # fmt: skip
GETTING = {"bigger": "growing", "larger": "growing", "smaller": "shrinking"}  # "getting bigger"
BG_NOUNS = frozenset({"background", "backdrop"})
FILLERS = frozenset(
    "a an one single the of at in on to towards toward near along that which and with against over "
    "front frame image picture canvas scene corner side edge part area plain there it".split()
)

# --- meaning -> words (generation); the first entry of each list is the canonical one ---
_SIZE_SYN = {"small": ["small", "tiny", "little"], "large": ["large", "big"]}
_COLOUR_SYN = {c: [c] for c in COLOURS} | {"purple": ["purple", "violet"], "cyan": ["cyan", "aqua"]}
_BG_SYN = {"black": ["black"], "white": ["white"], "gray": ["gray", "grey"]}
_SHAPE_SYN = {"circle": ["circle", "disc", "disk", "ball"], "square": ["square", "box", "block"], "triangle": ["triangle"],
              "cross": ["cross", "plus"]}
_V_SYN = {"top": ["top", "upper"], "bottom": ["bottom", "lower"]}
_CORNER_T = ["at the {v} {h}", "in the {v} {h}", "in the {v} {h} corner", "in the {v}-{h} corner",
             "at the {v} {h} of the frame", "near the {v} {h} corner"]  # fmt: skip
_EDGE_V_T = ["at the {v}", "near the {v}", "at the {v} of the frame", "along the {v} edge",
             "in the {p} part of the image", "at the {v} center"]  # fmt: skip
_EDGE_H_T = ["on the {h}", "on the {h} side", "at the {h}", "at the {h} edge", "on the {h} side of the image"]
_CENTER_T = ["in the center", "in the centre", "in the middle", "at the center", "in the middle of the frame", "centered"]
_MOTION_T = {
    "left": ["moving left", "moving to the left", "that moves left", "going left", "drifting left",
             "sliding to the left", "heading left"],
    "right": ["moving right", "moving to the right", "that moves right", "going right", "drifting right",
              "sliding to the right", "heading right"],
    "up": ["moving up", "moving upward", "that moves up", "going up", "rising", "drifting upwards", "heading up"],
    "down": ["moving down", "moving downward", "that moves down", "going down", "falling", "sinking",
             "drifting downwards"],
    "growing": ["growing", "that grows", "getting bigger", "growing larger", "expanding"],
    "shrinking": ["shrinking", "that shrinks", "getting smaller", "contracting"],
}  # fmt: skip
_BG_T = ["on a {bg} background", "against a {bg} background", "on a {bg} backdrop", "in front of a {bg} background",
         "over a {bg} background", "with a {bg} background", "on a plain {bg} background"]  # fmt: skip


def vocabulary() -> str:
    """The allowed words, for error messages."""
    return (
        f"sizes {sorted(SIZE_WORDS)}; colours {sorted(COLOUR_WORDS)}; shapes {sorted(SHAPE_WORDS)}; "
        f"positions {sorted(POSITION_WORDS)}; motions {sorted(MOTION_VERBS | set(MOTION_WORDS))} "
        f"with directions {sorted(DIRECTION_WORDS)}; backgrounds {sorted(BACKGROUND_WORDS)} + 'background'"
    )


# --- generation ----------------------------------------------------------------------------
def _article(next_word: str, rng: np.random.Generator | None) -> str:
    art = "a" if rng is None else str(rng.choice(["a", "a", "a", "one", "the"]))
    return "an" if art == "a" and next_word[0] in "aeiou" else art


def _pick(options: list[str], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _noun_phrase(obj: ObjectSpec, rng: np.random.Generator | None) -> str:
    words = [_pick(_SIZE_SYN[obj.size], rng)] if obj.size != "medium" else []
    words += [_pick(_COLOUR_SYN[obj.colour], rng), _pick(_SHAPE_SYN[obj.shape], rng)]
    return " ".join([_article(words[0], rng), *words])


def _position_phrase(pos: str, rng: np.random.Generator | None) -> str:
    parts = pos.split()
    if len(parts) == 2:
        return _pick(_CORNER_T, rng).format(v=_pick(_V_SYN[parts[0]], rng), h=parts[1])
    if pos in ("top", "bottom"):
        return _pick(_EDGE_V_T, rng).format(v=pos, p=_V_SYN[pos][1])
    if pos in ("left", "right"):
        return _pick(_EDGE_H_T, rng).format(h=pos)
    return _pick(_CENTER_T, rng)


def _clause(obj: ObjectSpec, rng: np.random.Generator | None) -> str:
    """Noun phrase plus its position and motion phrases (in random order when paraphrasing)."""
    mods = [_position_phrase(obj.position, rng)] if obj.position else []
    if obj.motion:
        mods.append(_pick(_MOTION_T[obj.motion], rng))
    if rng is not None:
        mods = [mods[i] for i in rng.permutation(len(mods))]
        mods = [(", " if rng.random() < 0.25 else " ") + m for m in mods]
    else:
        mods = [" " + m for m in mods]
    return _noun_phrase(obj, rng) + "".join(mods)


def _join(clauses: list[str]) -> str:
    return clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]


def prompt_for(spec: SceneSpec, rng: np.random.Generator | None = None, paraphrase: bool = True) -> str:
    """A prompt for `spec`; canonical and deterministic when paraphrase is False or rng is None."""
    if not paraphrase or rng is None:
        if len(spec.objects) == 1 and spec.objects[0].motion:
            obj = spec.objects[0]
            pos = f" {_position_phrase(obj.position, None)}" if obj.position else ""
            motion = _MOTION_T[obj.motion][0]
            return f"{_noun_phrase(obj, None)}{pos} on a {spec.background} background, {motion}"
        return f"{_join([_clause(o, None) for o in spec.objects])} on a {spec.background} background"

    objs = [spec.objects[i] for i in rng.permutation(len(spec.objects))]
    bg = _pick(_BG_SYN[spec.background], rng)
    bg_phrase = _pick(_BG_T, rng).format(bg=bg)
    single = objs[0] if len(objs) == 1 else None
    form = int(rng.integers(7 if single else 4))
    if form == 4 and single.position:  # position first: "at the top left, a red circle ..."
        motion = f" {_pick(_MOTION_T[single.motion], rng)}" if single.motion else ""
        text = f"{_position_phrase(single.position, rng)}, {_noun_phrase(single, rng)}{motion} {bg_phrase}"
    elif form == 5 and single.motion:  # motion last, after the background (canonical style)
        pos = f" {_position_phrase(single.position, rng)}" if single.position else ""
        text = f"{_noun_phrase(single, rng)}{pos} {bg_phrase}, {_pick(_MOTION_T[single.motion], rng)}"
    else:
        objects = _join([_clause(o, rng) for o in objs])
        if form == 1:
            text = f"{bg_phrase}, {objects}"
        elif form == 2:
            text = f"a {bg} {_pick(['background', 'backdrop'], rng)} with {objects}"
        elif form == 3:
            text = f"{objects}. {_pick(['the background is', 'background is', 'the backdrop is'], rng)} {bg}"
        else:
            text = f"{objects} {bg_phrase}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:] + "."
    return text


# --- parsing -------------------------------------------------------------------------------
def _tokens(text: str) -> list[tuple[str, str, str]]:
    """Words -> (kind, meaning, word) tokens; glue words dropped, unknown words rejected."""
    words = re.split(r"[\s,.;:!?()\"'\-]+", text.lower())
    words = [w for w in words if w]
    out: list[tuple[str, str, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w in MOTION_VERBS:  # "moving (to the) left": the direction belongs to the motion
            j = i + 1
            while j < len(words) and words[j] in ("to", "the", "towards", "toward"):
                j += 1
            if j == len(words) or words[j] not in DIRECTION_WORDS:
                raise ValueError(f"{w!r} must be followed by a direction {sorted(DIRECTION_WORDS)} in {text!r}")
            out.append(("motion", DIRECTION_WORDS[words[j]], w))
            i = j + 1
            continue
        if w == "getting":
            if i + 1 == len(words) or words[i + 1] not in GETTING:
                raise ValueError(f"'getting' must be followed by one of {sorted(GETTING)} in {text!r}")
            out.append(("motion", GETTING[words[i + 1]], w))
            i += 2
            continue
        if w in MOTION_WORDS:
            out.append(("motion", MOTION_WORDS[w], w))
            i += 2 if i + 1 < len(words) and words[i + 1] in GETTING and MOTION_WORDS[w] == GETTING[words[i + 1]] else 1
            continue
        if w in SIZE_WORDS:
            out.append(("size", SIZE_WORDS[w], w))
        elif w in COLOUR_WORDS or w in BACKGROUND_WORDS:
            out.append(("colour", w, w))
        elif w in SHAPE_WORDS:
            out.append(("shape", SHAPE_WORDS[w], w))
        elif w in POSITION_WORDS:
            axis, value = POSITION_WORDS[w]
            out.append(("pos", f"{axis}:{value}", w))
        elif w in BG_NOUNS:
            out.append(("bg", w, w))
        elif w == "is":
            out.append(("is", w, w))
        elif w not in FILLERS:
            raise ValueError(f"unknown word {w!r} in prompt {text!r}; allowed: {vocabulary()}")
        i += 1
    return out


def _position(words: list[str], values: list[str]) -> str:
    by_axis: dict[str, set[str]] = {"v": set(), "h": set(), "c": set()}
    for v in values:
        axis, name = v.split(":")
        by_axis[axis].add(name)
    if len(by_axis["v"]) > 1 or len(by_axis["h"]) > 1:
        raise ValueError(f"contradictory position words {words}; allowed positions: {list(POSITIONS)}")
    v, h = next(iter(by_axis["v"]), None), next(iter(by_axis["h"]), None)
    return f"{v} {h}" if v and h else v or h or "center"


def _background_colour(word: str) -> str:
    if word not in BACKGROUND_WORDS:
        raise ValueError(f"background {word!r} is not allowed; backgrounds: {sorted(BACKGROUNDS)}")
    return BACKGROUND_WORDS[word]


def parse_prompt(text: str, rng: np.random.Generator | None = None) -> SceneSpec:
    """Prompt -> SceneSpec. Unnamed objects get non-overlapping random centres from `rng`
    (a fixed seed when None, so the same text always gives the same scene)."""
    toks = _tokens(text)
    background: str | None = None
    objects: list[dict] = []
    pending: dict[str, str] = {}  # size/colour words waiting for their shape
    held: dict[str, str] = {}  # position/motion phrases waiting for the next object

    def attach(key: str, value: str, word: str) -> None:
        last = objects[-1] if objects and not pending else None
        if last is not None and key not in last:
            last[key] = value
        elif key not in held:
            held[key] = value
        else:
            raise ValueError(f"two {key}s given for one object (at {word!r}) in {text!r}")

    i = 0
    while i < len(toks):
        kind, value, word = toks[i]
        if kind == "colour" and i + 1 < len(toks) and toks[i + 1][0] == "bg":  # "gray background"
            kind, value, i = "background", _background_colour(word), i + 2
        elif kind == "bg":  # "the background is gray"
            if i + 2 < len(toks) and toks[i + 1][0] == "is" and toks[i + 2][0] == "colour":
                kind, value, i = "background", _background_colour(toks[i + 2][2]), i + 3
            else:
                raise ValueError(f"{word!r} needs a colour, e.g. 'on a gray {word}', in {text!r}")
        if kind == "background":
            if background is not None and background != value:
                raise ValueError(f"two backgrounds ({background!r}, {value!r}) in {text!r}")
            background = value
            continue
        if kind in ("size", "colour"):
            key = "size" if kind == "size" else "colour"
            if key in pending:
                raise ValueError(f"two {key} words before one shape (at {word!r}) in {text!r}")
            if kind == "colour" and word not in COLOUR_WORDS:
                raise ValueError(f"{word!r} is not an object colour; colours: {sorted(COLOUR_WORDS)}")
            pending[key] = COLOUR_WORDS[word] if kind == "colour" else value
        elif kind == "shape":
            if "colour" not in pending:
                raise ValueError(f"the {word!r} has no colour; colours: {sorted(COLOUR_WORDS)}")
            objects.append({"shape": value, **pending, **held})
            pending, held = {}, {}
        elif kind == "pos":
            j = i
            while j < len(toks) and toks[j][0] == "pos":
                j += 1
            run = toks[i:j]
            attach("position", _position([t[2] for t in run], [t[1] for t in run]), word)
            i = j
            continue
        elif kind == "motion":
            attach("motion", value, word)
        i += 1

    if pending:
        raise ValueError(f"{sorted(pending.values())} not followed by a shape {sorted(SHAPE_WORDS)} in {text!r}")
    if held:
        raise ValueError(f"{sorted(held.values())} does not belong to any object in {text!r}")
    if not objects:
        raise ValueError(f"no object in prompt {text!r}; expected e.g. 'a red circle'; allowed: {vocabulary()}")
    if background is None:
        raise ValueError(f"no background in prompt {text!r}; add 'on a <{'|'.join(BACKGROUNDS)}> background'")
    return SceneSpec(background, _place(objects, rng))


def _place(objects: list[dict], rng: np.random.Generator | None) -> list[ObjectSpec]:
    """Give unnamed objects random centres that keep clear of the others (best effort)."""
    rng = np.random.default_rng(0) if rng is None else rng
    unnamed = [o for o in objects if "position" not in o]
    for _ in range(200):
        for o in unnamed:
            o["center"] = random_free_center(rng)
        specs = [ObjectSpec(**o) for o in objects]
        if not unnamed or not any_overlap(specs):
            break
    return specs


assert set(MOTIONS) == set(_MOTION_T) and set(ALL_SHAPES) == set(_SHAPE_SYN)
