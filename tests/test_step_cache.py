"""Step caching in the DiT's block loop (omnidit/dit/cache.py) through the Pipeline and the DiT."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import make_tiny_model_dir
from tolerances import assert_rel_close

from omnidit import Pipeline
from omnidit.dit.cache import FirstBlockCache, MagCache, StepCache, TeaCache, build_cache
from omnidit.request import CACHE_DEFAULTS, RequestError, parse_cache

PROMPTS = ["a red circle", "a blue square"]


def policies(threshold: float) -> list[StepCache]:
    """One object per policy; teacache/magcache with hand-made calibration (the calibration test fits real ones)."""
    return [FirstBlockCache(threshold), TeaCache(threshold, [1.0, 0.0]),
            MagCache(threshold, [1.0, 1.02, 0.99, 1.01, 0.98])]


class BlockCalls:
    """Counts the rows the DiT's last block runs on: every computed (sample, branch) is one row."""

    def __init__(self, dit):
        self.calls, self.rows = 0, 0
        self.handle = dit.single_transformer_blocks[-1].register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.calls += 1
        self.rows += args[0].shape[0]

    def close(self):
        self.handle.remove()


def test_threshold_zero_is_bit_exact(tiny_pipe):
    steps = 5
    want = tiny_pipe.generate_latents(PROMPTS, seeds=[1, 2], steps=steps)[0]
    for cache in policies(0.0):
        got = tiny_pipe.generate_latents(PROMPTS, seeds=[1, 2], steps=steps, cache=cache)[0]
        assert torch.equal(got, want), cache.name
        assert cache.computed == [2] * steps, cache.name


def test_skipped_steps_reuse_the_residual_and_still_call_back(tiny_pipe):
    steps = 8
    want = tiny_pipe.generate_latents(PROMPTS[:1], seeds=[3], steps=steps)[0]
    for cache in (FirstBlockCache(0.5), TeaCache(0.3, [1.0, 0.0]), MagCache(0.5, [1.0, 1.05, 0.97, 1.02])):
        seen: list[int] = []
        counter = BlockCalls(tiny_pipe.dit)
        try:
            got = tiny_pipe.generate_latents(PROMPTS[:1], seeds=[3], steps=steps, cache=cache,
                                             callback=lambda i, n, x, seen=seen: seen.append(i))[0]
        finally:
            counter.close()
        computed = sum(cache.computed)
        assert seen == list(range(1, steps + 1)), cache.name  # every step calls back, skipped or not
        assert cache.computed[0] == cache.computed[-1] == 1, cache.name  # first and last always computed
        assert 2 <= computed < steps, (cache.name, cache.computed)  # something was skipped
        # the tail of the block stack ran exactly on the computed steps, with both CFG rows
        assert counter.calls == computed and counter.rows == 2 * computed, (cache.name, counter.calls, computed)
        err = float((got - want).norm() / want.norm())
        assert 0 < err < 0.2, (cache.name, err)  # reused, not recomputed; still close to the uncached result


def test_skip_adds_the_cached_residual():
    """Same input twice: the second (middle) step skips and equals the computed step up to rounding."""
    from test_parallel_dit import inputs, tiny_dit

    dit = tiny_dit()
    args = inputs((2, 2, 2))
    cache = FirstBlockCache(1e-3)
    cache.begin(steps=3)
    with torch.no_grad():
        first = dit(*args, cache=cache)
        counter = BlockCalls(dit)
        second = dit(*args, cache=cache)
        counter.close()
    assert cache.computed == [2, 0] and counter.calls == 0
    assert_rel_close(second, first, 1e-5)


def test_decisions_are_per_sample_so_batching_does_not_change_a_sample(tiny_pipe):
    steps = 8
    alone = []
    for p, s in zip(PROMPTS, [4, 5]):
        c = FirstBlockCache(0.15)
        alone.append((tiny_pipe.generate_latents([p], seeds=[s], steps=steps, cache=c)[0], c.per_sample[0].item()))
    c = FirstBlockCache(0.15)
    both = tiny_pipe.generate_latents(PROMPTS, seeds=[4, 5], steps=steps, cache=c)[0]
    assert c.per_sample.tolist() == [n for _, n in alone]
    for i, (x, _) in enumerate(alone):
        assert_rel_close(both[i : i + 1], x, 1e-5)


class RecordingPipe:
    """The tiny pipeline, recording each `generate_many` call's batch size and cache."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def generate_many(self, prompts, **kwargs):
        self.calls.append((len(prompts), kwargs.get("cache")))
        return self.pipe.generate_many(prompts, **kwargs)


def test_requests_with_different_cache_never_share_a_batch(tiny_pipe):
    from omnidit.serving.engine import run_image_batch
    from omnidit.serving.schemas import ImageRequest, ModelInfo, resolve_image

    info = ModelInfo.from_pipeline(tiny_pipe)
    specs = ["fbcache", "fbcache:0.1", "none", None, "magcache:0.2"]
    payloads = [resolve_image(ImageRequest(prompt="a red circle", size="32x32", steps=2, seed=i, cache=c), info,
                              max_images=8, max_steps=10) for i, c in enumerate(specs)]
    assert [p["cache"] for p in payloads] == ["fbcache:0.1", "fbcache:0.1", "none", None, "magcache:0.2"]
    rec = RecordingPipe(tiny_pipe)
    results = run_image_batch(rec, payloads)
    assert sorted(rec.calls, key=str) == sorted([(2, "fbcache:0.1"), (1, "none"), (1, None), (1, "magcache:0.2")],
                                                key=str)
    assert [len(r["images"]) for r in results[:4]] == [1, 1, 1, 1]
    assert results[4]["error"]["param"] == "cache"  # uncalibrated magcache: a 422 naming the field


def test_http_and_batch_lines_check_the_cache_field():
    from omnidit.batch.lines import BatchItem, parse_line
    from omnidit.serving.errors import ApiError
    from omnidit.serving.schemas import ImageRequest, ModelInfo, resolve_image

    item = parse_line('{"prompt": "a cat", "cache": "teacache"}', 1)
    assert isinstance(item, BatchItem) and item.cache == "teacache:0.1"
    other = parse_line('{"prompt": "a cat", "cache": "teacache:0.2"}', 2)
    assert item.group_key != other.group_key
    plain = parse_line('{"prompt": "a cat"}', 3)
    assert plain.cache is None and "cache" not in str(plain.fingerprint("m"))
    bad = parse_line('{"prompt": "a cat", "cache": "lru"}', 4)
    assert "cache" in bad.message and "fbcache" in bad.message
    info = ModelInfo(id="m", name="m", width=32, height=32, max_width=64, max_height=64, max_frames=17, temporal_ratio=4,
                     size_multiple=16, fps=8, steps=3, guidance=3.0)
    with pytest.raises(ApiError) as e:
        resolve_image(ImageRequest(prompt="a", cache="fbcache:-1"), info, max_images=4, max_steps=10)
    assert e.value.status == 422 and e.value.param == "cache"


def test_spec_parsing_names_the_field_and_allowed_values():
    assert parse_cache(None) is None
    assert parse_cache("fbcache").threshold == CACHE_DEFAULTS["fbcache"]
    assert str(parse_cache("teacache:0.25")) == "teacache:0.25"
    assert str(parse_cache("none")) == "none"
    for bad in ("fastcache", "fbcache:", "fbcache:-0.1", "fbcache:nan", "none:1", 3, "fbcache:11"):
        with pytest.raises(RequestError) as e:
            parse_cache(bad)
        assert e.value.field == "cache" and "fbcache" in str(e.value)


def test_uncalibrated_policies_fail_loudly(tiny_pipe):
    with pytest.raises(RequestError) as e:
        tiny_pipe.generate("a red circle", seed=1, cache="teacache")
    assert e.value.field == "cache" and "calibrate-cache" in str(e.value)
    with pytest.raises(ValueError, match="one of"):
        build_cache("lru", 0.1)


def test_calibration_is_written_and_used_by_a_later_load(tmp_path):
    from omnidit.pipeline_cache import calibrate_model

    folder = make_tiny_model_dir(tmp_path / "m", sampling={"steps": 6})
    path, cal = calibrate_model(folder, device="cpu", prompts=PROMPTS)
    assert path == folder / "cache.json" and cal["steps"] == 6 and cal["generations"] == 2
    assert len(cal["magcache"]["ratios"]) == 6 and len(cal["teacache"]["coefficients"]) == 5
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    assert pipe.cache_calibration == json.loads(path.read_text())
    want = pipe.generate_latents(PROMPTS[:1], seeds=[1])[0]
    for policy in ("teacache", "magcache"):
        cache = pipe.make_cache(f"{policy}:0")
        assert torch.equal(pipe.generate_latents(PROMPTS[:1], seeds=[1], cache=cache)[0], want)
        coeffs = cache.coefficients if policy == "teacache" else cache.ratios
        stored = cal["teacache"]["coefficients"] if policy == "teacache" else cal["magcache"]["ratios"]
        assert coeffs == stored
        g = pipe.generate(PROMPTS[0], seed=1, cache=f"{policy}:5")
        assert g.info["cache"] == f"{policy}:5" and g.info["steps_computed"] < 6


def test_model_folder_default_and_none(tmp_path):
    folder = make_tiny_model_dir(tmp_path / "m", sampling={"steps": 6, "cache": "fbcache:0.5"})
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    g = pipe.generate(PROMPTS[0], seed=1)
    assert g.info["cache"] == "fbcache:0.5" and g.info["steps_computed"] < 6
    off = pipe.generate(PROMPTS[0], seed=1, cache="none")
    assert "cache" not in off.info
    with pytest.raises(ValueError, match="sampling.cache"):
        make_tiny_model_dir(tmp_path / "bad", sampling={"cache": "fbcache:x"})
        Pipeline.from_pretrained(tmp_path / "bad", device="cpu")


def test_hunyuanvideo_folder(tmp_path):
    from tiny_hunyuan import make_tiny_hunyuan_pipeline_dir

    folder = make_tiny_hunyuan_pipeline_dir(tmp_path / "hv")
    pipe = Pipeline.from_pretrained(folder, device="cpu")
    kw = dict(frames=5, height=32, width=32, steps=6, seeds=[1])
    want = pipe.generate_latents(["a cat"], **kw)[0]
    assert torch.equal(pipe.generate_latents(["a cat"], cache="fbcache:0", **kw)[0], want)
    cache = FirstBlockCache(1.5)  # the random tiny model's block 0 residual moves a lot between steps
    got = pipe.generate_latents(["a cat"], cache=cache, **kw)[0]
    assert cache.branches == 1 and sum(cache.computed) < 6  # embedded guidance: one branch
    assert 0 < float((got - want).norm() / want.norm()) < 0.5
