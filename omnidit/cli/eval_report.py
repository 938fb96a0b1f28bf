"""How `omnidit eval` prints its results (and writes them as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

# Table columns: the evaluator's attributes in reading order, "all" (every attribute right) last.
ATTRS = ("background", "colour", "shape", "position", "size", "count", "motion", "all")


def report(text: str, results: dict, json_path: str | None) -> int:
    print(text, flush=True)
    write_json(results, json_path)
    return 0


def write_json(results: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(results, indent=2) + "\n")


def format_results(results: dict) -> str:
    """One model's adherence: a header, then one line per kind (images, videos)."""
    lines = [f"model {results['model']}  steps {results['steps']}  sampler {results['sampler']}  "
             f"shift {results['shift']}"]
    for kind in ("images", "videos"):
        r = results.get(kind)
        if not r:
            continue
        scores = "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["scores"].items())
        computed = f"  {r['fraction_computed']:.0%} of steps computed" if r.get("fraction_computed", 1) < 1 else ""
        lines.append(f"{kind:6s} n={r['n']:<4d} {r['seconds_per_sample']:.3f} s/sample{computed}  {scores}")
    return "\n".join(lines)


def format_comparison(results: dict) -> str:
    """Student vs teacher: per row its steps, speed, diversity, similarity and share of the teacher's scores."""
    lines = [f"student {results['student']} vs teacher {results['teacher']}"]
    for kind in ("images", "videos"):
        rows = results.get(kind)
        if not rows:
            continue
        ref = rows["teacher_default"]
        for name, r in rows.items():
            keep = "  ".join(
                f"{k} {100 * v:.1f}%" + (f" ({100 * v / ref['scores'][k]:.0f}% of teacher)"
                                          if name != "teacher_default" and ref["scores"].get(k) else "")
                for k, v in r["scores"].items())
            sim = (f"  PSNR {r['psnr_vs_teacher']:.2f} dB  SSIM {r['ssim_vs_teacher']:.3f}"
                   if "psnr_vs_teacher" in r else "")
            lines.append(f"{kind:6s} {name:18s} steps {r['steps']:<3d} {r['seconds_per_sample']:.3f} s/sample"
                         f"  diversity {r['diversity']:.3f}{sim}")
            lines.append(f"       {keep}")
    return "\n".join(lines)


def table_header(label: str, width: int, extra: str = "") -> str:
    return f"{'':8s} {label:{width}s} " + " ".join(f"{a:>10s}" for a in ATTRS) + extra


def table_row(kind: str, label: str, width: int, scores: dict[str, float], extra: str = "") -> str:
    """Scores as percentages under ATTRS ("-" where an attribute does not apply); long labels keep their end."""
    cells = " ".join(f"{scores[a]:10.1%}" if a in scores else f"{'-':>10s}" for a in ATTRS)
    return f"{kind:8s} {label[-width:]:{width}s} {cells}{extra}"
