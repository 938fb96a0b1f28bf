"""omnidit.sampling: schedule/step parity with diffusers, analytic flows, callbacks, validation."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from tolerances import FP32_REL, assert_rel_close

from omnidit.sampling import (
    Cancelled,
    batch_noise,
    cfg_combine,
    custom_sigmas,
    embedded_guidance,
    flow_sigmas,
    sample_euler,
    sample_x0_renoise,
    shift_sigmas,
    timesteps_from_sigmas,
)


def diffusers_schedule(steps: int, shift: float):
    """What HunyuanVideoPipeline makes the scheduler hold for `steps` (sigmas, timesteps)."""
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device="cpu")
    return sched


@pytest.mark.parametrize("steps,shift", [(1, 1.0), (4, 1.0), (8, 7.0), (30, 7.0), (50, 5.0), (13, 2.5)])
def test_flow_sigmas_match_diffusers(steps, shift):
    sched = diffusers_schedule(steps, shift)
    sigmas = flow_sigmas(steps, shift)
    assert sigmas.shape == (steps + 1,) and sigmas.dtype == torch.float32
    assert sigmas[-1] == 0
    torch.testing.assert_close(sigmas, sched.sigmas, atol=1e-6, rtol=FP32_REL)
    torch.testing.assert_close(timesteps_from_sigmas(sigmas[:-1]), sched.timesteps, atol=1e-6, rtol=FP32_REL)


def test_custom_sigmas_match_diffusers():
    values = [1.0, 0.75, 0.5, 0.25]
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(sigmas=values)
    torch.testing.assert_close(custom_sigmas(values, shift=3.0), sched.sigmas, atol=1e-6, rtol=FP32_REL)


def test_shift_sigmas_properties():
    s = torch.linspace(0, 1, 11)
    assert torch.equal(shift_sigmas(s, 1.0), s)
    shifted = shift_sigmas(s, 7.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:-1] > s[1:-1])  # more time spent at high noise
    assert torch.all(torch.diff(shifted) > 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_euler_loop_equals_scheduler_step(dtype):
    steps, shift = 6, 7.0
    sched = diffusers_schedule(steps, shift)
    sched.set_begin_index(0)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 3, 5, 5, generator=gen)
    outputs = [torch.randn(x0.shape, generator=gen).to(dtype) for _ in range(steps)]

    ref = x0.clone()  # the pipeline's latents start in float32
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(outputs[i], t, ref, return_dict=False)[0]

    seen = []

    def model_fn(x, sigma):
        i = len(seen)
        seen.append(sigma)
        assert sigma.shape == (2,)
        torch.testing.assert_close(timesteps_from_sigmas(sigma), sched.timesteps[i].expand(2), atol=1e-4, rtol=FP32_REL)
        return outputs[i]

    out = sample_euler(model_fn, x0.clone(), flow_sigmas(steps, shift))
    assert len(seen) == steps
    assert out.dtype == ref.dtype == dtype
    assert_rel_close(out, ref)


def test_x0_renoise_equals_stochastic_scheduler():
    steps = 4
    sched = FlowMatchEulerDiscreteScheduler(shift=1.0, stochastic_sampling=True)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1])
    sched.set_begin_index(0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    outputs = [torch.randn(x.shape, generator=torch.Generator().manual_seed(10 + i)) for i in range(steps)]

    ref, g = x.clone(), torch.Generator().manual_seed(5)
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(outputs[i], t, ref, generator=g, return_dict=False)[0]

    calls = iter(outputs)
    out = sample_x0_renoise(lambda x, s: next(calls), x.clone(), flow_sigmas(steps),
                            noise_sampler=batch_noise(torch.Generator().manual_seed(5)))
    assert_rel_close(out, ref)


def point_mass_model(x0):
    """Exact flow velocity when all data is the single point x0: v = (x - x0) / s."""
    return lambda x, sigma: (x - x0) / sigma.view(-1, *([1] * (x.ndim - 1)))


@pytest.mark.parametrize("sampler", [sample_euler, sample_x0_renoise])
@pytest.mark.parametrize("sigmas", [flow_sigmas(1), flow_sigmas(5, 7.0), custom_sigmas([1.0, 0.6, 0.2])])
def test_point_mass_reaches_x0(sampler, sigmas):
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    out = sampler(point_mass_model(x0), noise, sigmas.double())
    torch.testing.assert_close(out, x0, atol=1e-12, rtol=0)
    # Sanity: the check can fail — ending at a non-zero sigma leaves noise in the sample.
    early = sampler(point_mass_model(x0), noise, torch.tensor([1.0, 0.1], dtype=torch.float64))
    assert (early - x0).abs().max() > 1e-2


def gaussian_velocity(mu: float, c: float):
    """Exact flow-matching velocity E[noise - x0 | x_s] for data x0 ~ N(mu, c^2), noise ~ N(0, 1)."""

    def v(x, sigma):
        s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        a = 1 - s
        var = a**2 * c**2 + s**2  # Var[x_s]
        centred = x - a * mu
        return (s - a * c**2) / var * centred - mu

    return v


def test_euler_transports_gaussian():
    # The probability-flow ODE is affine here: it maps noise n to mu + c * n exactly.
    mu, c = 0.7, 0.3
    noise = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    target = mu + c * noise
    errors = {}
    for steps in (10, 100, 1000):
        out = sample_euler(gaussian_velocity(mu, c), noise, flow_sigmas(steps).double())
        errors[steps] = (out - target).abs().max().item()
    assert errors[1000] < 5e-3
    # First order: ten times the steps, about a tenth of the error.
    assert errors[10] > 5 * errors[100] > 25 * errors[1000]
    # The shifted schedule converges to the same mapping (more slowly: fewer low-noise steps).
    out = sample_euler(gaussian_velocity(mu, c), noise, flow_sigmas(1000, shift=7.0).double())
    assert (out - target).abs().max() < 2e-2
    assert abs(out.mean() - target.mean()) < 2e-3 and abs(out.std() - target.std()) < 5e-3


@pytest.mark.parametrize("sampler", [sample_euler, sample_x0_renoise])
def test_callback_reports_and_cancel_stops_within_one_step(sampler):
    calls, seen = [], []

    def model_fn(x, sigma):
        calls.append(sigma[0].item())
        return torch.zeros_like(x)

    out = sampler(model_fn, torch.ones(1, 2), flow_sigmas(3), callback=lambda i, n, x: seen.append((i, n, x.shape)))
    assert seen == [(1, 3, (1, 2)), (2, 3, (1, 2)), (3, 3, (1, 2))] and out.shape == (1, 2)

    calls.clear()

    def cancel(i, n, x):
        raise Cancelled("user cancelled")

    with pytest.raises(Cancelled):
        sampler(model_fn, torch.ones(1, 2), flow_sigmas(10), callback=cancel)
    assert len(calls) == 1


def test_guidance_helpers():
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    assert torch.equal(cfg_combine(cond, uncond, 6.0), uncond + 6.0 * (cond - uncond))
    torch.testing.assert_close(cfg_combine(cond, uncond, 1.0), cond)
    torch.testing.assert_close(cfg_combine(cond, uncond, 0.0), uncond)
    with pytest.raises(ValueError, match="same shape"):
        cfg_combine(cond, uncond[:1], 2.0)

    for dtype in (torch.float32, torch.bfloat16):
        ref = torch.tensor([6.3] * 3, dtype=dtype) * 1000.0  # diffusers' expression
        got = embedded_guidance(6.3, 3, "cpu", dtype)
        assert got.dtype == dtype and torch.equal(got, ref)
    with pytest.raises(ValueError, match="batch"):
        embedded_guidance(6.0, 0)
    with pytest.raises(ValueError, match="guidance scale"):
        embedded_guidance(float("nan"), 1)


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda: flow_sigmas(0), "steps"),
        (lambda: flow_sigmas(-3), "steps"),
        (lambda: flow_sigmas(2.5), "steps"),
        (lambda: flow_sigmas(4, 0.0), "shift"),
        (lambda: flow_sigmas(4, -1.0), "shift"),
        (lambda: shift_sigmas(torch.ones(3), float("inf")), "shift"),
        (lambda: custom_sigmas([0.5, 0.9]), "sigmas"),
        (lambda: custom_sigmas([1.5, 0.5]), "sigmas"),
        (lambda: sample_euler(lambda x, s: x, torch.ones(1, 2), torch.tensor([1.0])), "sigmas"),
        (lambda: sample_x0_renoise(lambda x, s: x, torch.ones(1, 2), torch.ones(2, 2)), "sigmas"),
    ],
)
def test_bad_input_names_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()

