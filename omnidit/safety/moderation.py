"""The moderation hook: one `Moderator`, two places.

- `check_prompt({"prompt": ..., "negative_prompt": ...})` and, for image inputs (image-to-video's
  start image), `check_input(image)` before any work is queued or stored;
- `check_output(frames)` after decoding, before anything is returned, written or stored.

Either returns quietly or raises `ContentBlocked(stage, category, field)`, whose message names
the category and never the text or the term that matched. Each decision (allowed or blocked)
goes to the audit log, when one is given.

Strictness (`level`): "auto" enforces the whole policy; "low" (OpenAI's `moderation: "low"`)
skips the categories in the policy's `low.allow` and uses `low.thresholds` for classifiers.
"""

from __future__ import annotations

import threading

import numpy as np

from omnidit.safety.audit import AuditLog
from omnidit.safety.policy import LEVELS, ClassifierSpec, Policy
from omnidit.safety.text import fold, variants

CODE = "content_policy_violation"
STAGES = ("prompt", "input", "output")  # input: images a request brings, checked by the output classifier


class ContentBlocked(Exception):
    """A prompt or an output the policy does not allow. `code` is the API's error code."""

    code = CODE

    def __init__(self, stage: str, category: str, field: str | None = None):
        what = {"prompt": f"the {field or 'prompt'}", "input": f"the {field or 'input'} image",
                "output": "the generated output"}[stage]
        super().__init__(f"{what} was blocked by the content policy (category: {category})")
        self.stage, self.category, self.field = stage, category, field

    @property
    def param(self) -> str:
        return self.field or {"prompt": "prompt", "input": "input_reference", "output": "output"}[self.stage]


def check_level(level: str | None) -> str:
    """None -> "auto"; otherwise one of LEVELS, or a ValueError naming them."""
    if level is None:
        return "auto"
    if level not in LEVELS:
        raise ValueError(f"moderation must be one of {list(LEVELS)}, got {level!r}")
    return level


def _load_classifier(task: str, spec: ClassifierSpec):
    """A transformers pipeline on CPU from a local folder; every threshold label must be one of its labels."""
    import transformers

    if task == "text-classification":
        model = transformers.AutoModelForSequenceClassification.from_pretrained(spec.path, local_files_only=True)
        extra = {"tokenizer": transformers.AutoTokenizer.from_pretrained(spec.path, local_files_only=True)}
    else:
        model = transformers.AutoModelForImageClassification.from_pretrained(spec.path, local_files_only=True)
        extra = {"image_processor": transformers.AutoImageProcessor.from_pretrained(spec.path, local_files_only=True)}
    pipe = transformers.pipeline(task, model=model.eval(), device="cpu", **extra)
    labels = {str(v).casefold() for v in pipe.model.config.id2label.values()}
    missing = sorted(set(spec.thresholds) - labels)
    if missing:
        raise ValueError(f"classifier {spec.path!r} has no labels {missing}; its labels: {sorted(labels)}")
    return pipe


class Moderator:
    """A policy's checks, with the classifiers of the stages asked for loaded up front (a service's
    ingress needs the prompt and input stages, its generator replicas only the output stage). The
    input stage uses the output classifier, loaded on the first input image (an ingress that never
    sees one never loads it)."""

    def __init__(self, policy: Policy, *, audit: AuditLog | None = None, stages: tuple[str, ...] = STAGES):
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ValueError(f"moderation stages must be among {list(STAGES)}, got {unknown}")
        self.policy, self.audit = policy, audit
        self._lock = threading.Lock()  # transformers pipelines are not thread-safe
        self._text = (_load_classifier("text-classification", policy.prompt_classifier)
                      if "prompt" in stages and policy.prompt_classifier is not None else None)
        self._image = (_load_classifier("image-classification", policy.output_classifier)
                       if "output" in stages and policy.output_classifier is not None else None)
        self._inputs = "input" in stages and policy.output_classifier is not None

    @property
    def checks_outputs(self) -> bool:
        return self._image is not None

    @property
    def checks_inputs(self) -> bool:
        """Whether `check_input` looks at images (the policy has an image classifier)."""
        return self._inputs

    # -- prompts ------------------------------------------------------------------------------
    def check_prompt(self, texts: dict[str, str | None], *, level: str | None = None,
                     request_id: str | None = None) -> None:
        """`texts`: field -> text (None skipped); the first field is the prompt the audit log hashes."""
        level = check_level(level)
        prompt = next(iter(texts.values()), None)
        for name, text in texts.items():
            if not text:
                continue
            hit = self._match_text(text, level)
            if hit is not None:
                self._decide("prompt", "blocked", request_id, prompt, level, *hit, field=name)
        self._decide("prompt", "allowed", request_id, prompt, level)

    def _match_text(self, text: str, level: str) -> tuple[str, str] | None:
        """(category, check) of the first rule the text breaks, or None."""
        forms = variants(text)
        for cat, pattern in self.policy.terms.items():
            if self.policy.enforced(cat, level) and any(pattern.search(f) for f in forms):
                return cat, "terms"
        folded = fold(text)
        for cat, patterns in self.policy.patterns.items():
            if self.policy.enforced(cat, level) and any(p.search(text) or p.search(folded) for p in patterns):
                return cat, "pattern"
        if self._text is not None:
            with self._lock:
                scores = self._text(text, top_k=None, truncation=True)
            cat = self._over_threshold(scores, self.policy.prompt_classifier, level)
            if cat is not None:
                return cat, "classifier"
        return None

    # -- image inputs -------------------------------------------------------------------------
    def check_input(self, image: np.ndarray, *, field: str = "input_reference", prompt: str | None = None,
                    level: str | None = None, request_id: str | None = None) -> None:
        """An image a request brings (uint8 `[H, W, 3]`, or `[F, H, W, 3]`), by the output classifier and
        its thresholds, before the request is queued. No image classifier in the policy: nothing to check."""
        level = check_level(level)
        if not self._inputs:
            return
        with self._lock:
            if self._image is None:
                self._image = _load_classifier("image-classification", self.policy.output_classifier)
        self._classify("input", image, field, prompt, level, request_id)

    # -- outputs ------------------------------------------------------------------------------
    def check_output(self, frames: np.ndarray, *, prompt: str | None = None, level: str | None = None,
                     request_id: str | None = None) -> None:
        """uint8 `[F, H, W, 3]` (or one `[H, W, 3]` image). No output classifier: nothing to check."""
        level = check_level(level)
        if self._image is None:
            return
        self._classify("output", frames, None, prompt, level, request_id)

    def _classify(self, stage: str, frames: np.ndarray, field: str | None, prompt: str | None, level: str,
                  request_id: str | None) -> None:
        from PIL import Image

        frames = frames[None] if frames.ndim == 3 else frames
        spec = self.policy.output_classifier
        picks = np.unique(np.linspace(0, len(frames) - 1, min(spec.frames, len(frames))).round().astype(int))
        images = [Image.fromarray(frames[i]) for i in picks]
        with self._lock:
            results = self._image(images, top_k=None)
        for scores in results:
            cat = self._over_threshold(scores, spec, level)
            if cat is not None:
                self._decide(stage, "blocked", request_id, prompt, level, cat, "classifier", field=field)
        self._decide(stage, "allowed", request_id, prompt, level, field=field)

    # -- shared -------------------------------------------------------------------------------
    def _over_threshold(self, scores: list[dict], spec: ClassifierSpec, level: str) -> str | None:
        for s in sorted(scores, key=lambda s: -s["score"]):
            label = str(s["label"]).casefold()
            t = spec.threshold(label, level)
            if t is not None and s["score"] >= t and self.policy.enforced(label, level):
                return label
        return None

    def _decide(self, stage: str, decision: str, request_id: str | None, prompt: str | None, level: str,
                category: str | None = None, check: str | None = None, field: str | None = None) -> None:
        if self.audit is not None:
            self.audit.record(stage=stage, decision=decision, request_id=request_id, prompt=prompt,
                              category=category, check=check, field=field, level=level)
        if decision == "blocked":
            raise ContentBlocked(stage, category, field)
