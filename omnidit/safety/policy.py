"""A content policy, loaded from a JSON or YAML file (`omnidit serve|batch|generate --moderation FILE`).

    blocked_terms:            # category -> terms; see omnidit/safety/text.py for how they match
      violence: [kill, "blow up"]
    patterns:                 # category -> regular expressions (Python syntax, case-insensitive)
      personal_data: ['\\b\\d{3}-\\d{2}-\\d{4}\\b']
    prompt_classifier:        # optional: a local transformers text-classification folder
      path: ./classifiers/prompt
      thresholds: {toxic: 0.8}          # label -> block at score >= threshold; the label is the category
    output_classifier:        # optional: a local transformers image-classification folder
      path: ./classifiers/nsfw
      thresholds: {nsfw: 0.7}
      frames: 4                         # frames of a video looked at (evenly spaced, first and last included)
    low:                      # what `moderation: "low"` (OpenAI's images field) relaxes
      allow: [personal_data]            # categories not enforced at "low"
      thresholds: {toxic: 0.95}         # classifier thresholds replaced at "low"

Only `blocked_terms` is required to be meaningful; every other key is optional. Unknown keys, a
bad regex, a threshold outside (0, 1] or a classifier folder that does not exist are errors
naming the key (a `PolicyError`, a ValueError).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from omnidit.safety.text import compile_terms

LEVELS = ("auto", "low")  # strictness: OpenAI's `moderation` values; "auto" is the default
KEYS = ("blocked_terms", "patterns", "prompt_classifier", "output_classifier", "low")
CLASSIFIER_KEYS = ("path", "thresholds", "frames")
_CATEGORY = re.compile(r"^[A-Za-z0-9_.:/-]{1,64}$")


class PolicyError(ValueError):
    """The policy file is wrong; the message names the key."""


@dataclass(frozen=True)
class ClassifierSpec:
    path: str
    thresholds: dict[str, float]  # label (case-folded) -> threshold at "auto"
    low_thresholds: dict[str, float]  # the same at "low" (falls back to `thresholds`)
    frames: int = 4

    def threshold(self, label: str, level: str) -> float | None:
        label = label.casefold()
        if level == "low" and label in self.low_thresholds:
            return self.low_thresholds[label]
        return self.thresholds.get(label)


@dataclass(frozen=True)
class Policy:
    terms: dict[str, re.Pattern] = field(default_factory=dict)  # category -> compiled alternation
    patterns: dict[str, tuple[re.Pattern, ...]] = field(default_factory=dict)
    prompt_classifier: ClassifierSpec | None = None
    output_classifier: ClassifierSpec | None = None
    low_allow: frozenset[str] = frozenset()
    source: str = "policy"

    def enforced(self, category: str, level: str) -> bool:
        return not (level == "low" and category in self.low_allow)

    @property
    def categories(self) -> list[str]:
        cats = set(self.terms) | set(self.patterns)
        for spec in (self.prompt_classifier, self.output_classifier):
            if spec is not None:
                cats |= set(spec.thresholds)
        return sorted(cats)


def load_policy(path: str | os.PathLike) -> Policy:
    """A policy from a `.json`, `.yaml` or `.yml` file; classifier paths are relative to the file."""
    path = Path(path)
    if not path.is_file():
        raise PolicyError(f"moderation policy {str(path)!r} does not exist or is not a file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            obj = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            obj = yaml.safe_load(text)
        else:
            raise PolicyError(f"moderation policy {path.name!r}: use a .json, .yaml or .yml file")
    except (json.JSONDecodeError, ImportError) as e:
        raise PolicyError(f"moderation policy {path.name!r} is not valid JSON: {e}") from None
    except Exception as e:  # yaml.YAMLError
        if isinstance(e, PolicyError):
            raise
        raise PolicyError(f"moderation policy {path.name!r} is not valid YAML: {e}") from None
    return parse_policy(obj, source=str(path), base=path.parent)


def parse_policy(obj, *, source: str = "policy", base: str | os.PathLike | None = None) -> Policy:
    if not isinstance(obj, dict):
        raise PolicyError(f"{source}: a policy is a mapping with keys {list(KEYS)}, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise PolicyError(f"{source}: unknown keys {unknown}; allowed: {list(KEYS)}")
    terms = {cat: pat for cat, items in _category_lists(obj, "blocked_terms", source).items()
             if (pat := compile_terms(items)) is not None}
    patterns = {}
    for cat, items in _category_lists(obj, "patterns", source).items():
        compiled = []
        for i, src in enumerate(items):
            try:
                compiled.append(re.compile(src, re.IGNORECASE))
            except re.error as e:
                raise PolicyError(f"{source}: patterns.{cat}[{i}] is not a valid regular expression: {e}") from None
        patterns[cat] = tuple(compiled)
    low = obj.get("low") or {}
    if not isinstance(low, dict) or set(low) - {"allow", "thresholds"}:
        raise PolicyError(f"{source}: low must be a mapping with keys allow (categories) and thresholds")
    allow = low.get("allow") or []
    if not isinstance(allow, list) or not all(isinstance(c, str) for c in allow):
        raise PolicyError(f"{source}: low.allow must be a list of category names")
    low_thresholds = _thresholds(low.get("thresholds") or {}, "low.thresholds", source)
    base = Path(base) if base is not None else Path.cwd()
    return Policy(terms=terms, patterns=patterns,
                  prompt_classifier=_classifier(obj, "prompt_classifier", low_thresholds, base, source),
                  output_classifier=_classifier(obj, "output_classifier", low_thresholds, base, source),
                  low_allow=frozenset(allow), source=source)


def _category_lists(obj: dict, key: str, source: str) -> dict[str, list[str]]:
    value = obj.get(key) or {}
    if not isinstance(value, dict):
        raise PolicyError(f'{source}: {key} must be a mapping of category -> list of strings, '
                          f'e.g. {{"violence": ["term"]}}')
    out = {}
    for cat, items in value.items():
        if not isinstance(cat, str) or not _CATEGORY.match(cat):
            raise PolicyError(f"{source}: {key}: category names are 1-64 of A-Z a-z 0-9 _ . : / -, got {cat!r}")
        if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
            raise PolicyError(f"{source}: {key}.{cat} must be a list of non-empty strings")
        out[cat] = items
    return out


def _thresholds(value, where: str, source: str) -> dict[str, float]:
    if not isinstance(value, dict):
        raise PolicyError(f"{source}: {where} must be a mapping of label -> threshold in (0, 1]")
    out = {}
    for label, t in value.items():
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise PolicyError(f"{source}: {where}.{label} must be a number in (0, 1], got {t!r}")
        out[str(label).casefold()] = float(t)
    return out


def _classifier(obj: dict, key: str, low: dict[str, float], base: Path, source: str) -> ClassifierSpec | None:
    spec = obj.get(key)
    if spec is None:
        return None
    if not isinstance(spec, dict) or set(spec) - set(CLASSIFIER_KEYS) or "path" not in spec:
        raise PolicyError(f"{source}: {key} must be a mapping with path (a local folder), thresholds "
                          f"(label -> (0, 1]) and optionally frames")
    path = Path(str(spec["path"])).expanduser()
    path = path if path.is_absolute() else base / path
    if not (path / "config.json").is_file():
        raise PolicyError(f"{source}: {key}.path {str(path)!r} is not a local transformers model folder "
                          f"(no config.json); classifiers are never downloaded")
    thresholds = _thresholds(spec.get("thresholds") or {}, f"{key}.thresholds", source)
    if not thresholds:
        raise PolicyError(f"{source}: {key}.thresholds must name at least one label to block")
    frames = spec.get("frames", 4)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise PolicyError(f"{source}: {key}.frames must be an integer >= 1, got {frames!r}")
    return ClassifierSpec(path=str(path), thresholds=thresholds,
                          low_thresholds={k: v for k, v in low.items() if k in thresholds}, frames=frames)
