"""`omnidit eval`'s comparisons on a tiny model: its scores are the evaluator's on the frames it
says it scored, under other decoders (--decoder) and other sampling settings (--sweep)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from tiny_models import make_tiny_model_dir

from omnidit.cli import main
from omnidit.pipeline import Pipeline
from omnidit.shapes import evaluate_many, parse_prompt
from omnidit.shapes.adherence import VIDEO_FRAMES, eval_pipeline, eval_prompts

SMALL = ["--n", "3", "--seed", "5", "--size", "32"]  # eval's images from seed 5; videos from seed 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture(scope="module")
def other_vae(model, tmp_path_factory):
    """The model's VAE with its decoder's last conv shifted: same latent space, other frames."""
    from diffusers import AutoencoderKLHunyuanVideo

    vae = AutoencoderKLHunyuanVideo.from_pretrained(model / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.conv.bias.add_(0.4)
    path = tmp_path_factory.mktemp("other") / "vae"
    vae.save_pretrained(path)
    return path


def evaluator_scores(pipe, prompts: list[str], *, frames: int, seed: int, **sampling) -> dict[str, float]:
    """What omnidit.shapes.evaluate says of `pipe`'s frames for eval's seeds, rounded as eval reports."""
    gens = pipe.generate_many(prompts, seeds=[seed + i for i in range(len(prompts))], frames=frames,
                              height=32, width=32, **sampling)
    scores = evaluate_many(zip((g.frames for g in gens), (parse_prompt(p) for p in prompts)))
    return {k: round(v, 4) for k, v in scores.items() if v is not None}


def test_decoder_rows_are_the_evaluators_scores_of_each_decoder(model, other_vae, tmp_path, capsys):
    from omnidit.tokenizers import VideoVAE

    cache, out = tmp_path / "cache", tmp_path / "out.json"
    argv = ["eval", "--model", str(model), *SMALL, "--videos", "1", "--decoder", str(other_vae),
            "--latent-cache", str(cache), "--json", str(out)]
    assert main(argv) == 0
    std = capsys.readouterr()
    assert "sampling 3 images" in std.err and "sampling 1 videos" in std.err and len(list(cache.iterdir())) == 2
    assert "small squares read as" in std.out and str(other_vae)[-40:] in std.out
    got = json.loads(out.read_text())["decoders"]
    assert list(got) == [str(model / "vae"), str(other_vae)]
    assert got[str(other_vae)]["images"] != got[str(model / "vae")]["images"]  # two decoders, two readings

    pipe = Pipeline.from_pretrained(model, device="cpu")
    sets = (("images", eval_prompts(3, seed=5, video=False), 1), ("videos", eval_prompts(1, seed=6, video=True),
                                                                   VIDEO_FRAMES))
    for kind, prompts, frames in sets:  # the model's own decoder: exactly `omnidit eval`'s scores
        own = eval_pipeline(pipe, prompts, frames=frames, seed=5, height=32, width=32)["scores"]
        assert got[str(model / "vae")][kind] == own == evaluator_scores(pipe, prompts, frames=frames, seed=5), kind
    pipe.vae = VideoVAE.from_pretrained(other_vae, device="cpu")
    for kind, prompts, frames in sets:  # the other decoder: the evaluator on the frames it decodes
        assert got[str(other_vae)][kind] == evaluator_scores(pipe, prompts, frames=frames, seed=5), kind

    assert main(argv) == 0  # the second run decodes the kept latents: same scores, nothing sampled
    assert "sampling" not in capsys.readouterr().err
    assert json.loads(out.read_text())["decoders"] == got


def test_decoder_folders_are_checked_before_sampling(model, tmp_path, capsys):
    from diffusers import AutoencoderKLHunyuanVideo

    wide = tmp_path / "wide"
    AutoencoderKLHunyuanVideo(latent_channels=8, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                              norm_num_groups=4, mid_block_add_attention=False).save_pretrained(wide)
    for bad, named in ((tmp_path / "nope", "no config.json"), (wide, "not the model's latent space")):
        assert main(["eval", "--model", str(model), *SMALL, "--decoder", str(bad),
                     "--latent-cache", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0] and str(bad) in err[0], err
        assert not (tmp_path / "cache").exists()


def test_sweep_rows_are_eval_rows_under_each_setting(model, tmp_path, capsys):
    out = tmp_path / "sweep.json"
    assert main(["eval", "--model", str(model), *SMALL, "--videos", "0", "--sweep", "steps=2",
                 "--sweep", "shift=3.0,sampler=x0_renoise", "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [ln.split()[1] for ln in table[1:]] == ["as", "steps=2", "shift=3.0,sampler=x0_renoise"]
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == [{}, {"steps": 2}, {"shift": 3.0, "sampler": "x0_renoise"}]
    assert [(r["steps"], r["sampler"], r["shift"]) for r in rows] == [(3, "euler", 1.0), (2, "euler", 1.0),
                                                                      (3, "x0_renoise", 3.0)]
    pipe = Pipeline.from_pretrained(model, device="cpu")
    prompts = eval_prompts(3, seed=5, video=False)
    shipped = pipe.config
    for r, (config, call) in zip(rows, (({}, {}), ({}, {"steps": 2}), ({"shift": 3.0, "sampler": "x0_renoise"}, {}))):
        pipe.config = dataclasses.replace(shipped, **config)
        want = eval_pipeline(pipe, prompts, seed=5, height=32, width=32, **call)["scores"]
        assert r["images"]["scores"] == want == evaluator_scores(pipe, prompts, frames=1, seed=5, **call), r

    # The flags give the first row: `--shift 3 --sampler x0_renoise` alone is the sweep's last row.
    assert main(["eval", "--model", str(model), *SMALL, "--videos", "0", "--shift", "3", "--sampler",
                 "x0_renoise", "--json", str(out)]) == 0
    plain = json.loads(out.read_text())
    assert plain["images"]["scores"] == rows[2]["images"]["scores"] and plain["shift"] == 3.0
    assert "sampler x0_renoise  shift 3.0" in capsys.readouterr().out


@pytest.mark.parametrize("argv,named", [
    (["--sweep", "shfit=2"], "shfit=2"),
    (["--sweep", "steps=four"], "steps must be an integer"),
    (["--sweep", "shift"], "KEY=VALUE"),
    (["--sweep", "sampler=heun"], "sampler 'heun' not one of"),
    (["--sweep", "shift=0"], "shift"),
    (["--shift", "-1"], "shift"),
    (["--sweep", "steps=2", "--decoder", "x"], "--decoder and --sweep"),
    (["--n", "0", "--videos", "0"], "--n and --videos"),
    (["--sweep", "cache=fbcash"], "cache policy must be one of"),
    (["--cache", "magcache"], "calibrate-cache"),
])
def test_bad_settings_exit_2_in_one_line_before_sampling(model, monkeypatch, capsys, argv, named):
    def refuse(*args, **kwargs):
        raise AssertionError("sampled before the settings were checked")

    monkeypatch.setattr(Pipeline, "generate_many", refuse)
    monkeypatch.setattr(Pipeline, "generate_latents", refuse)
    assert main(["eval", "--model", str(model), *SMALL, *argv]) == 2
    std = capsys.readouterr()
    err = std.err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and not std.out, std


def test_setting_parser_names_the_bad_part():
    from omnidit.cli.eval_settings import parse_setting

    assert parse_setting("shift=1.5,sampler=euler") == {"shift": 1.5, "sampler": "euler"}
    assert parse_setting("steps=6,guidance=2") == {"steps": 6, "guidance": 2.0}
    for bad in ("", ",", "steps=", "sampler"):
        with pytest.raises(ValueError, match="KEY=VALUE|must be"):
            parse_setting(bad)


def test_cache_sweep_rows_compare_with_the_first_rows_frames_and_resume(model, tmp_path, capsys, monkeypatch):
    from omnidit.distill.compare import psnr, ssim

    out = tmp_path / "cache.json"
    argv = ["eval", "--model", str(model), *SMALL, "--videos", "0", "--steps", "4", "--cache", "none",
            "--sweep", "cache=fbcache:0", "--sweep", "cache=fbcache:0.5", "--json", str(out)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"]["cache"] for r in rows] == ["none", "fbcache:0", "fbcache:0.5"]
    first, exact, cached = (r["images"] for r in rows)
    assert "psnr_vs_first" not in first and first["fraction_computed"] == 1.0
    assert exact["psnr_vs_first"] == 100.0 and exact["ssim_vs_first"] == 1.0 and exact["fraction_computed"] == 1.0

    pipe = Pipeline.from_pretrained(model, device="cpu")
    prompts = eval_prompts(3, seed=5, video=False)
    seeds = [5 + i for i in range(3)]
    ref = pipe.generate_many(prompts, seeds=seeds, height=32, width=32, steps=4, cache="none")
    gens = pipe.generate_many(prompts, seeds=seeds, height=32, width=32, steps=4, cache="fbcache:0.5")
    computed = sum(g.info["steps_computed"] for g in gens)
    assert computed < 12 and cached["fraction_computed"] == round(computed / 12, 4)
    want_psnr = sum(min(psnr(g.frames, r.frames), 100.0) for g, r in zip(gens, ref)) / 3
    assert want_psnr < 100.0 and cached["psnr_vs_first"] == pytest.approx(want_psnr, abs=0.01)
    assert cached["ssim_vs_first"] == pytest.approx(sum(ssim(g.frames, r.frames) for g, r in zip(gens, ref)) / 3,
                                                    abs=1e-4)

    # --resume after an interruption: finished rows are kept, only the missing one is sampled
    saved = json.loads(out.read_text())
    saved["rows"] = saved["rows"][:2]
    out.write_text(json.dumps(saved))
    calls = []
    real = Pipeline.generate_many
    monkeypatch.setattr(Pipeline, "generate_many", lambda self, *a, **k: calls.append(k["cache"]) or real(self, *a, **k))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert set(calls) == {"fbcache:0.5"}
    again = json.loads(out.read_text())["rows"]
    assert again[:2] == rows[:2]  # kept as written
    for r in (again[2], rows[2]):
        r["images"].pop("seconds_per_sample"), r["images"].pop("cpu_seconds_per_sample")  # timings differ run to run
    assert again[2] == rows[2]  # sampled again: the same scores and frames
    assert len(capsys.readouterr().out.splitlines()) == 4  # header + every row printed again
    other = [a if a != "none" else "fbcache:0.1" for a in argv]  # another first row: its frames are not these
    assert main([*other, "--resume"]) == 2
    assert "--resume" in capsys.readouterr().err
