"""The video-job worker loop of a generator replica: claim, run under a lease, write, finish.

- A lease is renewed by a heartbeat thread (every lease_s / 3, so a long VAE decode keeps
  it) and by every denoising step, which also writes progress.
- Cancel: DELETE marks the row cancelled; the next step's heartbeat finds the job is no
  longer ours and the callback raises `Cancelled`, so the replica is free within one step.
- Graceful stop (`stop()`): the running job goes back to the queue for another replica.
- A crash (replica killed): the lease expires and `JobStore.reap` requeues or fails it.
- The output is written atomically (temp file + rename) before the row says `completed`.

`DeviceGate` serialises use of the replica's device between image batches and video jobs,
letting waiting image batches in between a video's denoising steps.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from typing import Callable

from omnidit.safety import ContentBlocked
from omnidit.sampling import Cancelled
from omnidit.serving.files import OutputDir
from omnidit.serving.jobs import Job, JobStore

log = logging.getLogger("omnidit.serving")

# generate(job, callback) -> Generation; callback(step, total, latents) after each step.
GenerateFn = Callable[[Job, Callable], object]


class DeviceGate:
    """One generation at a time on a device; image batches go ahead of a video between its steps."""

    def __init__(self):
        self._cond = threading.Condition()
        self._busy = False
        self._images_waiting = 0

    def image(self):
        return _Hold(self, image=True)

    def video(self):
        return _Hold(self, image=False)

    def _acquire(self, image: bool) -> None:
        with self._cond:
            if image:
                self._images_waiting += 1
                try:
                    self._cond.wait_for(lambda: not self._busy)
                finally:
                    self._images_waiting -= 1
            else:
                self._cond.wait_for(lambda: not self._busy and not self._images_waiting)
            self._busy = True

    def _release(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def yield_to_images(self) -> None:
        """Called by a video holding the gate between steps: let waiting image batches run first."""
        with self._cond:
            if not self._images_waiting:
                return
            self._busy = False
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._busy and not self._images_waiting)
            self._busy = True


class _Hold:
    def __init__(self, gate: DeviceGate, image: bool):
        self.gate, self.image_ = gate, image

    def __enter__(self):
        self.gate._acquire(self.image_)

    def __exit__(self, *exc):
        self.gate._release()


def worker_id() -> str:
    """host:pid:random — unique per replica process, and says where a job ran."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobRunner:
    def __init__(self, store: JobStore, outputs: OutputDir, generate: GenerateFn, *, lease_s: float = 60.0,
                 poll_s: float = 0.5, owner: str | None = None, log_prompts: bool = False,
                 between_steps: Callable[[], None] | None = None, redact: Callable[[str], str] | None = None,
                 model: str | None = None, default_model: bool = True):
        self.store, self.outputs, self.generate = store, outputs, generate
        # Only this model's jobs (its id; None: any job); the default model also takes rows naming none.
        self.model, self.default_model = model, default_model
        self.lease_s, self.poll_s = lease_s, poll_s
        self.owner = owner or worker_id()
        self.log_prompts = log_prompts
        self.between_steps = between_steps
        self.redact = redact  # --store-prompts hash: a finished job's prompt -> its keyed hash
        self.current: str | None = None  # id of the running job
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self.run_forever, name="omnidit-job-runner", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop after the current step; the running job is released back to the queue."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_forever(self) -> None:
        while not self._stop.is_set():
            try:
                ran = self.run_one()
            except Exception:  # the store was unreachable: log it and keep trying
                log.exception("job runner error")
                ran = None
            if ran is None:
                self._stop.wait(self.poll_s)

    # -- one job ------------------------------------------------------------------------------
    def run_one(self) -> Job | None:
        """Claim and run one queued job; returns its final row, or None if the queue was empty."""
        job = self.store.claim(self.owner, self.lease_s, model=self.model, default=self.default_model)
        if job is None:
            return None
        self.current = job.id
        lost = threading.Event()  # set when the row is no longer ours (cancelled, deleted, taken over)
        beat = threading.Thread(target=self._heartbeat, args=(job.id, lost), daemon=True)
        beat.start()
        t0 = time.monotonic()
        steps_done, step_seconds = [0], [0.0]
        last = [None]  # end of the previous step; step 1 also holds text encoding, so it is not timed

        def callback(step: int, total: int, latents) -> None:
            now = time.monotonic()
            if last[0] is not None:
                step_seconds[0] += now - last[0]
            steps_done[0] = step
            if self._stop.is_set() or lost.is_set():
                raise Cancelled()
            if not self.store.heartbeat(job.id, self.owner, self.lease_s, progress=min(99, step * 100 // total)):
                lost.set()
                raise Cancelled()
            if self.between_steps is not None:
                self.between_steps()
            last[0] = time.monotonic()

        what = f" prompt={job.prompt!r}" if self.log_prompts else ""
        log.info("job %s started (attempt %d, %s)%s", job.id, job.attempts, _shape(job), what)
        try:
            gen = self.generate(job, callback)
            path = self.outputs.video_path(job.id)
            gen.save(path)  # atomic: temp file + rename
            self.outputs.save_thumbnail(job.id, gen.frames[0], label=gen.label())
            if self.store.complete(job.id, self.owner, path.name):
                log.info("job %s completed in %.1fs", job.id, time.monotonic() - t0)
            else:  # cancelled or deleted while decoding/writing
                self.outputs.remove_video(job.id)
                log.info("job %s finished but is no longer ours; output discarded", job.id)
        except Cancelled:
            if lost.is_set():
                log.info("job %s cancelled after %d steps", job.id, steps_done[0])
            elif self.store.release(job.id, self.owner):
                log.info("job %s released back to the queue (worker stopping)", job.id)
        except ContentBlocked as e:  # the output hook: nothing was written
            self.store.fail(job.id, self.owner, {"code": e.code, "message": str(e)})
            log.info("job %s blocked by the content policy (stage %s, category %s)", job.id, e.stage, e.category)
        except Exception as e:
            msg = f"{type(e).__name__}: {e}"
            code = "invalid_request" if isinstance(e, ValueError) else "generation_error"
            self.store.fail(job.id, self.owner, {"code": code, "message": msg[:500]})
            log.exception("job %s failed", job.id)
        finally:
            if self.redact is not None:
                self.store.redact_prompt(job.id, self.redact)
            lost.set()  # stops the heartbeat thread
            beat.join(5)
            self.current = None
            if steps_done[0] > 1:
                self.store.add_stats({"video_steps": steps_done[0] - 1, "video_step_seconds": step_seconds[0]})
        return self.store.get(job.id)

    def _heartbeat(self, job_id: str, lost: threading.Event) -> None:
        while not lost.wait(self.lease_s / 3):
            try:
                if not self.store.heartbeat(job_id, self.owner, self.lease_s):
                    lost.set()
            except Exception:  # a transient store error; the next beat (or the lease) decides
                log.exception("heartbeat for %s failed", job_id)


def _shape(job: Job) -> str:
    p = job.params
    return f"{p['width']}x{p['height']}x{p['frames']}f, {p['steps']} steps"
