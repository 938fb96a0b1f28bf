"""What a (re)run has to do: which ids are finished, which lines to report, how to batch the rest.

Chunks are cut from the whole file, not from what is left to do, so an item is always generated
in the same company: a resumed or re-run job writes the same bytes as one uninterrupted run,
whatever the concurrency. (A batch of prompts equals each prompt alone only up to float
rounding, so letting the composition change with progress would change outputs by 1/255.)
A chunk with some finished items is regenerated whole; only its unfinished outputs are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omnidit.batch.lines import BatchItem, LineError, ParsedPrompts
from omnidit.batch.manifest import finished_ids, reported_line_errors


@dataclass
class Plan:
    chunks: list[list[BatchItem]]  # each one `generate_many` call
    todo: set[str]  # ids whose outputs this run writes
    skipped: int  # items already finished
    new_errors: list[LineError]  # rejected lines not reported by an earlier run
    known_errors: int  # rejected lines an earlier run already reported
    items: list[BatchItem] = field(default_factory=list)


def chunk_items(items: list[BatchItem], batch_size: int) -> list[list[BatchItem]]:
    """Group items with the same shared arguments (file order kept), then cut groups into chunks."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    groups: dict[tuple, list[BatchItem]] = {}
    for it in items:
        groups.setdefault(it.group_key, []).append(it)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def plan_job(parsed: ParsedPrompts, rows: list[dict], out_dir: str | Path, *, model: str,
             batch_size: int, variant: dict | None = None) -> Plan:
    fingerprints = {it.id: it.fingerprint(model, variant) for it in parsed.items}
    done = finished_ids(rows, out_dir, fingerprints)
    todo = {it.id for it in parsed.items} - done
    chunks = [c for c in chunk_items(parsed.items, batch_size) if any(it.id in todo for it in c)]
    reported = reported_line_errors(rows)
    new_errors = [e for e in parsed.errors if (e.line, e.key) not in reported]
    return Plan(chunks=chunks, todo=todo, skipped=len(parsed.items) - len(todo), new_errors=new_errors,
                known_errors=len(parsed.errors) - len(new_errors), items=parsed.items)
