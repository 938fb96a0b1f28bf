"""Batch generation jobs on Ray Data: a JSONL file of prompts -> a folder of outputs + manifest.jsonl.

Resumable (a rerun skips finished ids), deterministic (seeds derived from ids, batches cut
from the whole file) and robust to bad lines (each becomes an error row). See `run_batch`.
"""

from omnidit.batch.lines import BatchItem, LineError, parse_line, parse_prompts
from omnidit.batch.manifest import MANIFEST_NAME, read_manifest
from omnidit.batch.runner import BatchConfig, BatchSummary, run_batch

__all__ = [
    "MANIFEST_NAME", "BatchConfig", "BatchItem", "BatchSummary", "LineError", "parse_line", "parse_prompts",
    "read_manifest", "run_batch",
]
