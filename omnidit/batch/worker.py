"""The generator actor of a batch job: a loaded Pipeline that turns chunks into encoded outputs.

Workers never touch the output folder: they return the encoded PNG/MP4 bytes and the driver
writes them (atomically) beside the manifest, so a multi-node cluster needs no shared disk.
"""

from __future__ import annotations

import json
import time

from omnidit.batch.lines import BatchItem
from omnidit.batch.safety import finisher


def generate_chunk(pipe, items: list[BatchItem], finish=None, default_loras: dict | None = None
                   ) -> list[tuple[dict, bytes]]:
    """One `generate_many` call for items sharing their arguments -> (result, bytes) per item.

    A failure (a ValueError from `Pipeline.check`, or anything the model raises) becomes an
    error result for each item of the chunk instead of stopping the job. `finish(gen, item)` (the
    output hook and labels, omnidit/batch/safety.py) runs before encoding; what it raises is that item's error.
    `default_loras`: the adapter set of items without a `lora` (the job's --lora scales).
    """
    first = items[0]
    t0 = time.perf_counter()
    try:
        gens = pipe.generate_many(
            [it.prompt for it in items], seeds=[it.seed for it in items], frames=first.frames,
            height=first.height, width=first.width, steps=first.steps, guidance=first.guidance,
            negative_prompt=first.negative_prompt, cache=first.cache,
            loras=json.loads(first.lora) if first.lora is not None else (default_loras or {}),
            image=_images(items),
        )
    except Exception as e:  # noqa: BLE001 - every failure is reported per item, the job goes on
        return [(_error(it, e, time.perf_counter() - t0), b"") for it in items]
    each = (time.perf_counter() - t0) / len(items)  # the batch's time, shared evenly
    out = []
    for it, gen in zip(items, gens):
        t1 = time.perf_counter()
        try:
            if finish is not None:
                finish(gen, it)
            data = gen.to_bytes(it.suffix.lstrip("."))
        except Exception as e:  # noqa: BLE001
            out.append((_error(it, e, each), b""))
            continue
        info = gen.info
        params = {"frames": info["frames"], "width": info["width"], "height": info["height"],
                  "steps": info["steps"], "guidance": info["guidance"], "negative_prompt": it.negative_prompt}
        if it.image is not None:
            params["image"] = it.image
        out.append(({"id": it.id, "status": "ok", "params": params, "error": None,
                     "seconds": each + time.perf_counter() - t1}, data))
    return out


def _images(items: list[BatchItem]):
    """The chunk's start images: None, one path for every item, or one per item (None for none)."""
    paths = [it.image for it in items]
    if all(p is None for p in paths):
        return None
    return paths[0] if len(set(paths)) == 1 else paths


def _error(item: BatchItem, e: Exception, seconds: float) -> dict:
    msg = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    return {"id": item.id, "status": "error", "params": None, "error": msg, "seconds": seconds}


class ChunkGenerator:
    """Ray Data callable class: one per actor, the model loaded once in `__init__`."""

    def __init__(self, model: str, device: str, threads: int | None = None, safety: dict | None = None,
                 memory: dict | None = None, loras: dict | None = None, lora_dir: str | None = None,
                 compile: str | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from omnidit.pipeline import Pipeline

        self.pipe = Pipeline.from_pretrained(model, device=device, **(memory or {}))  # weights, offload
        if compile:  # regional torch.compile (dit/compile.py); the actor's first chunk of each size compiles
            self.pipe.compile(compile)
        self.finish = finisher(safety or {})
        self.loras = {}  # the --lora set: {name: scale}
        for name, (path, scale) in (loras or {}).items():
            self.pipe.load_lora(path, name=name, scale=scale)
            self.loras[name] = scale
        self.pipe.set_lora_library(lora_dir)

    def __call__(self, batch):
        """A pyarrow batch of `chunk` (JSON list of items) -> a table of `id`, `result`, `data`."""
        import pyarrow as pa

        ids, results, datas = [], [], []
        for chunk in batch.column("chunk").to_pylist():
            items = [BatchItem(**d) for d in json.loads(chunk)]
            for result, data in generate_chunk(self.pipe, items, self.finish, self.loras):
                ids.append(result["id"])
                results.append(json.dumps(result))
                datas.append(data)
        return pa.table({"id": pa.array(ids, pa.string()), "result": pa.array(results, pa.string()),
                         "data": pa.array(datas, pa.binary())})
