"""Added latency per request of each content-safety check and label, on the CPU, in one run.

Each row is the median of --repeats calls of one check on one request, next to the reference it
adds to: one image generated in-process by --model (the embedded shapes-turbo by default) at its
default size. Classifiers are tiny random BERT/ViT folders built here (no download): their rows
measure the transformers-pipeline overhead at the smallest size, not a production classifier.

    python benchmarks/safety_checks.py
    python benchmarks/safety_checks.py --repeats 50 --terms 1000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes-turbo")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--terms", type=int, default=200, help="blocked terms in the policy (over 5 categories)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny_classifiers import make_image_classifier, make_text_classifier

    from omnidit import Pipeline
    from omnidit.safety import AuditLog, Moderator, aigc_label, draw_visible_label, parse_policy
    from omnidit.safety.labels import encode_image

    pipe = Pipeline.from_pretrained(args.model, device="cpu")
    prompt = "a small red circle at the top left on a black background, next to a large blue square"
    gen = pipe.generate(prompt, seed=0)
    frame = gen.frames[0]
    video = np.repeat(gen.frames, 17, axis=0)
    rows = [("generate one image (reference)", _median_ms(lambda: pipe.generate(prompt, seed=0), max(3, args.repeats // 4)))]

    d = Path(tempfile.mkdtemp())
    text_dir = make_text_classifier(d / "text", {"safe": 0.9, "toxic": 0.1})
    image_dir = make_image_classifier(d / "image", {"safe": 0.9, "nsfw": 0.1})
    terms = {f"cat{c}": [f"term{c}x{i}" for i in range(args.terms // 5)] + ["blow up"] for c in range(5)}
    audit = AuditLog(d / "audit.jsonl", b"k" * 32)
    only_terms = Moderator(parse_policy({"blocked_terms": terms}))
    only_patterns = Moderator(parse_policy({"patterns": {"pii": [r"\b\d{3}-\d{2}-\d{4}\b", r"\b[\w.]+@[\w.]+\.\w+\b"]}}))
    text_clf = Moderator(parse_policy({"prompt_classifier": {"path": str(text_dir), "thresholds": {"toxic": 0.9}}}))
    image_clf = Moderator(parse_policy({"output_classifier": {"path": str(image_dir), "thresholds": {"nsfw": 0.9}}}))
    audited = Moderator(parse_policy({"blocked_terms": terms}), audit=audit)
    label = aigc_label(model=args.model)
    texts = {"prompt": prompt, "negative_prompt": "blurry"}
    rows += [
        (f"prompt: {args.terms} blocked terms (prompt + negative)", _median_ms(lambda: only_terms.check_prompt(texts), args.repeats)),
        ("prompt: 2 regex patterns", _median_ms(lambda: only_patterns.check_prompt(texts), args.repeats)),
        ("prompt: audit log line (terms + HMAC + append)", _median_ms(lambda: audited.check_prompt(texts), args.repeats)),
        ("prompt: text classifier (tiny BERT)", _median_ms(lambda: text_clf.check_prompt(texts), args.repeats)),
        ("output: image classifier, one image (tiny ViT)", _median_ms(lambda: image_clf.check_output(frame), args.repeats)),
        ("output: image classifier, 17-frame video (4 frames)", _median_ms(lambda: image_clf.check_output(video), args.repeats)),
        ("label: png encode, no label", _median_ms(lambda: encode_image(frame, "png", None), args.repeats)),
        ("label: png encode with AIGC iTXt + XMP", _median_ms(lambda: encode_image(frame, "png", label), args.repeats)),
        ("label: visible label, one image", _median_ms(lambda: draw_visible_label(gen.frames, "AI"), args.repeats)),
    ]
    h, w = frame.shape[:2]
    print(f"model {args.model} {w}x{h}, CPU, 1 torch thread, median of {args.repeats}")
    print(f"| check | ms per request |\n|---|---|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    if args.out:
        Path(args.out).write_text(json.dumps([{"check": n, "ms": m} for n, m in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
