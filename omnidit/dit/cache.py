"""Step caching inside the DiT's block loop: at steps where the blocks' output would barely
change, skip them and reuse the residual (output - input) they added at the last computed step.

A policy is a per-generation object that `DiT.run_blocks` consults (the DiT stays single-device
code; the parallel runtime only supplies the `RowReduce` its metric goes through):

- `FirstBlockCache` ("fbcache"): run block 0; when its residual changed less than `threshold`
  (relative L1 against the last computed step), add the remaining blocks' cached residual.
- `TeaCache` ("teacache"): the relative L1 of block 0's timestep-modulated video input against
  the previous step, rescaled by a per-model polynomial (calibrated, stored in the model
  folder), is accumulated; all blocks are skipped while the sum stays under `threshold`.
- `MagCache` ("magcache"): a per-model curve of residual magnitude ratios between steps
  (calibrated); the accumulated |1 - product of ratios| is the error budget, at most
  `max_skip` steps in a row.

Always computed: the first step (there is nothing to reuse yet) and the last step (the
x0-renoise sampler returns the last prediction itself, and Euler's last step is the one that
lands on the clean sample); MagCache also keeps its first `retention` fraction of steps (0.2,
its published default: the residual's magnitude changes fastest early in the schedule).

Decisions are per sample, both CFG branches of a sample together: the metric adds the two
branches' sums (one decision, so cond and uncond never use residuals of different steps, and
CFG-parallel ranks, which hold one branch each, agree by construction). Per sample and not per
batch because a seed must give the same frames alone or in any batch: a batch decision would
make a sample's skipped steps depend on its batch-mates. Rows that compute run the remaining
blocks as a sub-batch; when every row computes, the code path is the uncached one, so a
threshold of 0 gives the uncached output bit for bit.

Across ranks the per-row partial sums go through `RowReduce.sums` (summed over the
sequence-parallel ranks' token chunks, gathered over the CFG ranks' batch halves), so every
rank sees the same per-sample metric and takes the same decisions.
"""

from __future__ import annotations

import dataclasses
import math

import torch

POLICIES = ("fbcache", "teacache", "magcache")


class RowReduce:
    """How a cache's per-row partial sums become whole-batch values. Single device: identity.

    `sums(x [rows, k])` -> `[global rows, k]` summed over every token of each row; `local(m)`
    picks this process's rows of a global per-row tensor; `valid_tokens` is how many leading
    video tokens of the local chunk are real (None: all; sequence-parallel chunks end in padding).
    """

    valid_tokens: int | None = None

    def sums(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def global_rows(self, local_rows: int) -> int:
        return local_rows

    def local(self, x: torch.Tensor) -> torch.Tensor:
        return x


class StepCache:
    """Shared machinery; subclasses implement `_probe`. Reusable: `begin` resets it per generation.

    Statistics of the last generation: `computed[i]` = samples whose blocks ran at step i.
    """

    name = ""

    def __init__(self, threshold: float):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
                or threshold < 0:
            raise ValueError(f"{self.name} threshold must be a finite number >= 0, got {threshold!r}")
        self.threshold = float(threshold)
        self.begin(steps=1, branches=1)

    def begin(self, *, steps: int, branches: int = 1) -> None:
        """Start a generation of `steps` forwards whose batch holds `branches` (1, or 2 with CFG) copies."""
        if steps < 1 or branches not in (1, 2):
            raise ValueError(f"StepCache.begin needs steps >= 1 and branches 1 or 2, got {steps}, {branches}")
        self.steps, self.branches, self.step = steps, branches, 0
        self.computed: list[int] = []
        self.per_sample: torch.Tensor | None = None  # [samples] steps computed, per sample
        self.samples = 0
        self._residual: torch.Tensor | None = None  # [rows, N, D] blocks' output - input, last computed step
        self._reset()

    def _reset(self) -> None:
        """Policy state of a new generation."""

    def forced(self) -> bool:
        """This step is always computed (first, last, or nothing cached yet)."""
        return self._residual is None or self.step == 0 or self.step >= self.steps - 1

    @property
    def fraction_computed(self) -> float:
        """Computed sample-steps / all sample-steps of the last generation."""
        return sum(self.computed) / max(1, self.samples * len(self.computed))

    # ---- the block loop ------------------------------------------------------------------

    def run(self, dit, img, txt, temb, rope, layout, reduce: RowReduce | None = None) -> torch.Tensor:
        """`DiT.run_blocks` with caching: img `[B, N, D]`, txt `[B, L, D]` -> img `[B, N, D]`."""
        reduce = reduce or RowReduce()
        rows_global = reduce.global_rows(img.shape[0])
        if rows_global % self.branches:
            raise ValueError(f"{rows_global} batch rows do not split into {self.branches} CFG branches")
        self.samples = rows_global // self.branches
        start_img, start_txt, first, want = self._probe(dit, img, txt, temb, rope, layout, reduce)
        if want is None or self.forced():
            want = torch.ones(self.samples, dtype=torch.bool)
        want = want.cpu()
        mask = reduce.local(want.repeat(self.branches))  # [rows]: rows are [branch 0 samples | branch 1 samples]
        self._after_decision(want, mask)
        self.computed.append(int(want.sum()))
        self.per_sample = want.long() + (0 if self.per_sample is None else self.per_sample)
        self.step += 1

        if bool(mask.all()):  # the uncached path, op for op
            out, _ = dit.run_block_range(start_img, start_txt, temb, rope, layout, first)  # [B, N, D]
            self._residual = out - start_img
            return out
        if not bool(mask.any()):
            return start_img + self._residual  # [B, N, D]
        idx = mask.nonzero().squeeze(1).to(img.device)  # rows that compute
        sub_layout = dataclasses.replace(layout, text_lengths=layout.text_lengths[idx.cpu()])
        sub, _ = dit.run_block_range(start_img[idx], start_txt[idx], temb[idx], rope, sub_layout, first)
        self._residual = self._residual.index_copy(0, idx, sub - start_img[idx])
        return (start_img + self._residual).index_copy(0, idx, sub)  # computed rows exact, others reused

    def _probe(self, dit, img, txt, temb, rope, layout, reduce):
        """-> (img, txt to resume from, index of the first block still to run, BoolTensor[samples]
        "compute this sample", or None for "all")."""
        raise NotImplementedError

    def _after_decision(self, want: torch.Tensor, mask: torch.Tensor) -> None:
        """Update references once the decision is known: want [samples], mask [local rows]."""

    def _rel_l1(self, a: torch.Tensor, b: torch.Tensor, reduce: RowReduce) -> torch.Tensor:
        """Per sample sum|a - b| / sum|b| over real video tokens, both CFG branches, every rank: [samples] f64."""
        v = reduce.valid_tokens
        if v is not None:
            a, b = a[:, :v], b[:, :v]
        num = (a - b).abs().sum(dim=(1, 2), dtype=torch.float64)  # [rows]
        den = b.abs().sum(dim=(1, 2), dtype=torch.float64)  # [rows]
        sums = reduce.sums(torch.stack([num, den], dim=1)).cpu()  # [global rows, 2]
        per = sums.view(self.branches, -1, 2).sum(0)  # [samples, 2]
        return per[:, 0] / per[:, 1].clamp_min(1e-30)


class FirstBlockCache(StepCache):
    name = "fbcache"

    def _reset(self) -> None:
        self._prev: torch.Tensor | None = None  # [rows, N, D] block 0's residual at the last computed step

    def _probe(self, dit, img, txt, temb, rope, layout, reduce):
        h, t = dit.run_block_range(img, txt, temb, rope, layout, 0, 1)  # after block 0
        self._signal = h - img  # [B, N, D] block 0's residual
        want = None
        if self._prev is not None:
            want = self._rel_l1(self._signal, self._prev, reduce) >= self.threshold
        return h, t, 1, want

    def _after_decision(self, want, mask):
        if self._prev is None or bool(mask.all()):
            self._prev = self._signal
        else:
            m = mask.to(self._signal.device)[:, None, None]
            self._prev = torch.where(m, self._signal, self._prev)
        self._signal = None


class TeaCache(StepCache):
    """`coefficients`: the rescaling polynomial, highest power first (numpy.polyval order)."""

    name = "teacache"

    def __init__(self, threshold: float, coefficients):
        self.coefficients = [float(c) for c in coefficients]
        if not self.coefficients or not all(math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"teacache coefficients must be a non-empty list of finite numbers, got {coefficients!r}")
        super().__init__(threshold)

    def _reset(self) -> None:
        self._prev: torch.Tensor | None = None  # [rows, N, D] block 0's modulated input, previous step
        self._acc: torch.Tensor | None = None  # [samples] accumulated rescaled distance (f64)

    def rescale(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.zeros_like(x)
        for c in self.coefficients:
            y = y * x + c
        return y.clamp_min(0.0)  # a fitted polynomial may dip below 0; distances never do

    def _probe(self, dit, img, txt, temb, rope, layout, reduce):
        m = dit.block_input(img, temb)  # [B, N, D]
        want = None
        if self._prev is not None and self._acc is not None:
            self._acc = self._acc + self.rescale(self._rel_l1(m, self._prev, reduce))
            want = self._acc >= self.threshold
        self._prev = m
        return img, txt, 0, want

    def _after_decision(self, want, mask):
        acc = self._acc if self._acc is not None else torch.zeros(self.samples, dtype=torch.float64)
        self._acc = torch.where(want, torch.zeros_like(acc), acc)  # computed samples start a new sum


class MagCache(StepCache):
    """`ratios`: the calibrated per-step magnitude ratios (any length; resampled to the step count)."""

    name = "magcache"

    def __init__(self, threshold: float, ratios, *, max_skip: int = 3, retention: float = 0.2):
        self.ratios = [float(r) for r in ratios]
        if len(self.ratios) < 2 or not all(math.isfinite(r) and r > 0 for r in self.ratios):
            raise ValueError(f"magcache ratios must be >= 2 positive finite numbers, got {ratios!r}")
        if max_skip < 1 or not 0 <= retention < 1:
            raise ValueError(f"magcache needs max_skip >= 1 and retention in [0, 1), got {max_skip}, {retention}")
        self.max_skip, self.retention = max_skip, retention
        super().__init__(threshold)

    def _reset(self) -> None:
        n = len(self.ratios)
        self._curve = [self.ratios[round(i * (n - 1) / max(1, self.steps - 1))] for i in range(self.steps)]
        self._acc_ratio, self._acc_err, self._acc_steps = 1.0, 0.0, 0

    def forced(self) -> bool:
        return super().forced() or self.step < int(self.retention * self.steps + 0.5)

    def _probe(self, dit, img, txt, temb, rope, layout, reduce):
        # The decision depends on the step index and the calibrated curve only: every rank and
        # every sample takes the same one without communicating.
        if self.forced():
            self._acc_ratio, self._acc_err, self._acc_steps = 1.0, 0.0, 0
            return img, txt, 0, None
        self._acc_ratio *= self._curve[self.step]
        self._acc_steps += 1
        self._acc_err += abs(1.0 - self._acc_ratio)
        skip = self._acc_err < self.threshold and self._acc_steps <= self.max_skip
        if not skip:
            self._acc_ratio, self._acc_err, self._acc_steps = 1.0, 0.0, 0
        return img, txt, 0, torch.full((self.samples,), not skip)


class Recorder(StepCache):
    """Computes every step and records what calibration fits (see `fit_calibration`), per step:
    `tea_x` block 0's modulated-input relative L1 against the previous step, `tea_y` the blocks'
    output relative L1, `mag` mean over tokens of |residual| / |previous residual|."""

    name = "recorder"

    def __init__(self):
        super().__init__(0.0)
        self.records: list[dict[str, list[float]]] = []

    def _reset(self) -> None:
        self._prev_in = self._prev_out = self._prev_res = None
        self.records = getattr(self, "records", [])
        self.records.append({"tea_x": [], "tea_y": [], "mag": []})

    def run(self, dit, img, txt, temb, rope, layout, reduce=None):
        if reduce is not None and type(reduce) is not RowReduce:
            raise ValueError("cache calibration runs in one process")
        m = dit.block_input(img, temb)
        out, _ = dit.run_block_range(img, txt, temb, rope, layout, 0)
        res = (out - img).float()
        rec = self.records[-1]
        if self._prev_in is not None:
            rec["tea_x"].append(float(self._rel_l1(m, self._prev_in, RowReduce()).mean()))
            rec["tea_y"].append(float(self._rel_l1(out, self._prev_out, RowReduce()).mean()))
            ratio = res.norm(dim=-1) / (self._prev_res.norm(dim=-1) + 1e-8)  # [B, N]
            rec["mag"].append(float(ratio.mean()))
        else:
            rec["mag"].append(1.0)
        self._prev_in, self._prev_out, self._prev_res = m, out, res
        self.samples = img.shape[0] // self.branches
        self.computed.append(self.samples)
        self.step += 1
        return out


def fit_calibration(records: list[dict[str, list[float]]], *, degree: int = 4) -> dict:
    """Recorded generations (all with the same step count) -> the model folder's cache section:
    `{"teacache": {"coefficients"}, "magcache": {"ratios"}, "steps", "generations"}`."""
    import numpy as np

    records = [r for r in records if r["mag"]]
    if not records:
        raise ValueError("fit_calibration needs at least one recorded generation")
    lengths = {len(r["mag"]) for r in records}
    if len(lengths) != 1 or lengths.pop() < 3:
        raise ValueError("every recorded generation needs the same step count, at least 3")
    x = np.concatenate([r["tea_x"] for r in records])
    y = np.concatenate([r["tea_y"] for r in records])
    coefficients = np.polyfit(x, y, min(degree, len(x) - 1)).tolist()
    ratios = np.mean([r["mag"] for r in records], axis=0).tolist()
    return {"teacache": {"coefficients": coefficients}, "magcache": {"ratios": ratios},
            "steps": len(ratios), "generations": len(records)}


def build_cache(policy: str, threshold: float, calibration: dict | None = None) -> StepCache:
    """A policy by name; teacache and magcache need the model's calibration (`fit_calibration`)."""
    calibration = calibration or {}
    if policy == "fbcache":
        return FirstBlockCache(threshold)
    if policy in ("teacache", "magcache"):
        section = calibration.get(policy)
        if not section:
            raise ValueError(f"cache {policy!r} needs this model's calibration: run "
                             f"`omnidit calibrate-cache --model M` once (fbcache needs none)")
        if policy == "teacache":
            return TeaCache(threshold, section["coefficients"])
        return MagCache(threshold, section["ratios"])
    raise ValueError(f"cache policy must be one of {POLICIES}, got {policy!r}")
