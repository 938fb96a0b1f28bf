"""`WorkerGroup`: one process per device running one parallel Pipeline, behind a Pipeline-like API.

A generator replica that owns K GPUs holds one WorkerGroup instead of a Pipeline:

    group = WorkerGroup("shapes", ParallelConfig(ulysses_degree=4, cfg_degree=2), device="cuda")
    gen = group.generate("a red circle", frames=33, seed=1, callback=on_step)   # Generation, as Pipeline's
    group.close()

Every worker receives every request and runs `Pipeline.generate_many` on it in lock step; rank 0
returns the frames and reports progress. A callback (in the caller's process) may raise
`Cancelled`: rank 0 then tells every rank, through one tiny broadcast per step, to stop at the same
step, so no rank is left waiting in a collective. Bad arguments raise ValueError in the caller
before any rank starts denoising; a crashed worker breaks the group (RuntimeError, then close()).
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
import traceback

import torch.multiprocessing as mp

from omnidit.parallel.state import ParallelConfig
from omnidit.request import RequestError
from omnidit.sampling import Cancelled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LORA_LIBRARY = "lora_library"  # an inbox message that is no generation


def _worker_main(rank, world, port, model, config, device, dtype, inbox, outbox, cancel, timeout_s, memory):
    """One process of the group: join the process group, load the Pipeline, serve requests."""
    import torch

    from omnidit.parallel import ParallelRuntime, init_parallel
    from omnidit.pipeline import Pipeline

    try:
        dev = torch.device(f"cuda:{rank}") if device == "cuda" else torch.device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        state = init_parallel(config, rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}",
                              device=dev, timeout_s=timeout_s)
        runtime = ParallelRuntime(state)
        backend = memory.pop("compile", None)
        pipe = Pipeline.from_pretrained(model, device=dev, dtype=dtype, parallel=runtime, **memory)
        if backend:  # every rank compiles its blocks; the SP attention hook stays eager (dit/compile.py)
            pipe.compile(backend)
    except Exception as e:
        outbox.put(("failed", None, rank, f"{type(e).__name__}: {e}"))
        return
    outbox.put(("ready", None, rank, None))
    try:
        while (job := inbox.get()) is not None:
            job_id, kwargs = job
            if job_id == _LORA_LIBRARY:  # every rank loads the same adapters for a request
                pipe.set_lora_library(**kwargs)
                continue

            def on_step(step, total, x, job_id=job_id):
                if rank == 0:
                    outbox.put(("progress", job_id, step, total))
                if runtime.agree(cancel.is_set()):  # rank 0's decision, on every rank, same step
                    raise Cancelled()

            try:
                gens = pipe.generate_many(**kwargs, callback=on_step)
                if rank == 0:
                    outbox.put(("done", job_id, rank, gens))
            except Cancelled:
                if rank == 0:
                    outbox.put(("cancelled", job_id, rank, None))
            except ValueError as e:  # argument checks: identical on every rank, before any collective
                if rank == 0:
                    outbox.put(("invalid", job_id, getattr(e, "field", None), str(e)))
            except Exception:
                outbox.put(("error", job_id, rank, traceback.format_exc()))
    finally:
        runtime.close()


class WorkerGroup:
    """K = config.world_size worker processes (spawned) sharing one generation at a time."""

    def __init__(self, model: str, config: ParallelConfig, *, device: str = "cpu", dtype=None,
                 start_timeout_s: float = 600.0, collective_timeout_s: float = 600.0, weights: str | None = None,
                 offload: str = "none", compile: str | None = None):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda' (one GPU per worker), got {device!r}")
        ctx = mp.get_context("spawn")
        self.config = config
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._cancel = ctx.Event()
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(config.world_size)]
        port = _free_port()
        self._procs = [
            ctx.Process(target=_worker_main, daemon=True, name=f"omnidit-worker-{r}",
                        args=(r, config.world_size, port, model, config, device, dtype, self._inboxes[r],
                              self._outbox, self._cancel, collective_timeout_s,
                              {"weights": weights, "offload": offload, "compile": compile}))
            for r in range(config.world_size)
        ]
        for p in self._procs:
            p.start()
        self._broken: str | None = None
        ready = set()
        deadline = time.monotonic() + start_timeout_s
        while len(ready) < len(self._procs):
            kind, _, rank, detail = self._next(deadline)
            if kind == "failed":
                self.close()
                raise RuntimeError(f"worker {rank} failed to start: {detail}")
            ready.add(rank)

    # ---- requests --------------------------------------------------------------------------

    def generate(self, prompt: str, *, seed: int | None = None, callback=None, **kwargs):
        """Same arguments and result as `Pipeline.generate`."""
        return self.generate_many([prompt], seeds=[seed], callback=callback, **kwargs)[0]

    def generate_many(self, prompts: list[str], *, callback=None, timeout_s: float | None = None, **kwargs):
        """Same arguments and result as `Pipeline.generate_many`; `callback(step, total, None)`."""
        with self._lock:
            if self._broken:
                raise RuntimeError(f"worker group is broken ({self._broken}); close it and start another")
            job_id = next(self._ids)
            self._cancel.clear()
            for inbox in self._inboxes:
                inbox.put((job_id, dict(kwargs, prompts=prompts)))
            deadline = time.monotonic() + timeout_s if timeout_s else None
            cancelled_here = False
            while True:
                kind, jid, a, b = self._next(deadline)
                if jid != job_id:
                    continue  # a stale message of an earlier job
                if kind == "progress":
                    if callback is not None and not cancelled_here:
                        try:
                            callback(a, b, None)
                        except Cancelled:
                            cancelled_here = True
                            self._cancel.set()
                    continue
                if kind == "done":
                    if cancelled_here:
                        raise Cancelled()
                    return b
                if kind == "cancelled":
                    raise Cancelled()
                if kind == "invalid":  # (field, message): the worker's RequestError, field kept as data
                    raise RequestError(a, b) if a is not None else ValueError(b)
                self._broken = f"worker {a} raised"
                raise RuntimeError(f"worker {a} failed; the group is unusable:\n{b}")

    def set_lora_library(self, folder, capacity: int = 8) -> None:
        """`Pipeline.set_lora_library` on every worker (before the requests sent after it)."""
        with self._lock:
            for inbox in self._inboxes:
                inbox.put((_LORA_LIBRARY, {"folder": folder, "capacity": capacity}))

    @property
    def broken(self) -> str | None:
        """Why the group can no longer serve (a worker died, hung or raised), or None."""
        return self._broken

    def cancel(self) -> None:
        """Stop the running generation at its next step (its generate call raises Cancelled)."""
        self._cancel.set()

    # ---- lifetime ---------------------------------------------------------------------------

    def _next(self, deadline: float | None):
        while True:
            try:
                return self._outbox.get(timeout=0.5)
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead:
                    self._broken = f"{', '.join(dead)} exited"
                    raise RuntimeError(f"worker process(es) {dead} exited unexpectedly") from None
                if deadline is not None and time.monotonic() > deadline:
                    self._broken = "timed out"
                    raise TimeoutError("worker group did not answer in time") from None

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop every worker (politely, then by force) and destroy their process groups."""
        for inbox in self._inboxes:
            try:
                inbox.put(None)
            except (ValueError, OSError):
                pass
        end = time.monotonic() + timeout_s
        for p in self._procs:
            p.join(max(0.0, end - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        self._procs = []

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
