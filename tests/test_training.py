"""Training smoke runs on tiny data: the loss falls, and a second run resumes from the checkpoint."""

from __future__ import annotations

import json

import numpy as np

from tests.tiny_models import make_tiny_model_dir


def _metrics(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_vae_training_learns_and_resumes(tmp_path, capsys):
    from omnidit.training.vae_train import VAETrainConfig, train_vae

    cfg = dict(out=str(tmp_path / "vae"), max_minutes=None, images_per_step=4, clips_per_step=1, clip_every=4,
               clip_frames=5, lr=3e-3, checkpoint_every=5, eval_n=4)
    folder = train_vae(VAETrainConfig(max_steps=20, **cfg))
    assert (folder / "config.json").is_file()
    rows = [r for r in _metrics(tmp_path / "vae" / "metrics.jsonl") if "l1" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[-1]["l1"] < 0.8 * rows[0]["l1"], rows

    train_vae(VAETrainConfig(max_steps=25, **cfg))
    assert "resumed VAE training at step 20" in capsys.readouterr().out
    rows = [r for r in _metrics(tmp_path / "vae" / "metrics.jsonl") if "l1" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25]
    final = _metrics(tmp_path / "vae" / "metrics.jsonl")[-1]
    assert final["step"] == 25 and final["psnr"] > 0 and "reconstruction_adherence" in final


def test_dit_training_loss_falls_and_resumes(tmp_path, capsys):
    """Online data (render + encode each batch): the path GPU training takes."""
    from omnidit.training.dit_train import DiTTrainConfig, train_dit

    teacher = make_tiny_model_dir(tmp_path / "tiny")
    cfg = dict(
        out=str(tmp_path / "dit"), vae=str(teacher / "vae"), data="online", workers=0, image_batch=8, video_batch=2,
        video_every=3, video_frames=5, lr=2e-3, warmup=5, max_minutes=None, checkpoint_every=5, eval_every=0,
        overrides=dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=1,
                       num_single_layers=1, rope_axes_dim=(4, 6, 6)),
    )
    train_dit(DiTTrainConfig(max_steps=40, **cfg))
    losses = [r["loss"] for r in _metrics(tmp_path / "dit" / "metrics.jsonl")]
    assert len(losses) == 8 and all(map(lambda v: v == v, losses))
    assert losses[-1] < 0.9 * losses[0], losses

    train_dit(DiTTrainConfig(max_steps=45, **cfg))
    assert "resumed DiT training at step 40" in capsys.readouterr().out
    rows = _metrics(tmp_path / "dit" / "metrics.jsonl")
    assert rows[-1]["step"] == 45

    import torch

    ck = torch.load(tmp_path / "dit" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 45 and set(ck) >= {"model", "ema", "opt", "gen", "dit_config"}


def test_dit_fine_tuning_starts_from_the_given_model(tmp_path):
    """`init_from`: the run starts from the model's weights and config (lr 0 = an exact copy)."""
    import torch

    from omnidit.dit import DiT
    from omnidit.training.dit_train import DiTTrainConfig, train_dit

    src = make_tiny_model_dir(tmp_path / "tiny")
    cfg = dict(vae=str(src / "vae"), data="online", workers=0, image_batch=4, video_batch=2, video_frames=5,
               max_minutes=None, checkpoint_every=1, eval_every=0, init_from=str(src), warmup=1)
    train_dit(DiTTrainConfig(out=str(tmp_path / "copy"), max_steps=1, lr=0.0, **cfg))
    want = DiT.from_pretrained(src / "transformer", dtype=torch.float32).state_dict()
    ck = torch.load(tmp_path / "copy" / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 1 and ck["dit_config"]["in_channels"] == 4
    for k, v in want.items():
        assert torch.equal(ck["model"][k], v) and torch.equal(ck["ema"][k], v), k

    train_dit(DiTTrainConfig(out=str(tmp_path / "tuned"), max_steps=3, lr=1e-3, **cfg))
    got = torch.load(tmp_path / "tuned" / "checkpoint.pt", weights_only=False)["model"]
    moved = [k for k in want if not torch.equal(got[k], want[k])]
    assert moved and max((got[k] - want[k]).abs().max().item() for k in moved) < 0.05  # a fine-tune, not a reset


def test_train_dit_cli_rejects_an_unknown_init_model(tmp_path, capsys):
    import pytest

    from omnidit.cli import main

    src = make_tiny_model_dir(tmp_path / "tiny")
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(["train", "dit", "--data", "online", "--vae", str(src / "vae"),
                               "--out", str(tmp_path / "x"), "--init-from", "no-such-model"]))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--init-from" in err and "no-such-model" in err and "Traceback" not in err


def test_vae_refit_keeps_the_latent_space(tmp_path):
    """--keep-latents-of: a config change (norm groups) without moving the latents a DiT learned."""
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.training.vae_train import VAETrainConfig, train_vae

    ref_dir = make_tiny_model_dir(tmp_path / "tiny") / "vae"
    ref = AutoencoderKLHunyuanVideo.from_pretrained(ref_dir)
    folder = train_vae(VAETrainConfig(out=str(tmp_path / "refit"), keep_latents_of=str(ref_dir), norm_groups=2,
                                      max_steps=12, max_minutes=None, images_per_step=4, clips_per_step=0, lr=3e-3,
                                      checkpoint_every=4, eval_n=4))
    new = AutoencoderKLHunyuanVideo.from_pretrained(folder)
    assert new.config.norm_num_groups == 2 and ref.config.norm_num_groups == 4
    assert new.config.scaling_factor == ref.config.scaling_factor
    rows = [r for r in _metrics(tmp_path / "refit" / "metrics.jsonl") if "anchor" in r]
    assert [r["step"] for r in rows] == [4, 8, 12]
    assert rows[-1]["anchor"] < rows[0]["anchor"], rows  # the new encoder moves onto the old latents
    shapes = {k: v.shape for k, v in ref.state_dict().items()}  # only the grouping differs
    assert {k: v.shape for k, v in new.state_dict().items()} == shapes


def test_video_shift_moves_noise_levels_towards_pure_noise():
    import torch

    from omnidit.sampling import training_sigmas as sample_sigmas

    plain = sample_sigmas(20000, torch.Generator().manual_seed(0))
    same = sample_sigmas(20000, torch.Generator().manual_seed(0), shift=1.0)
    shifted = sample_sigmas(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert torch.equal(plain, same)
    torch.testing.assert_close(shifted, 3 * plain / (1 + 2 * plain))  # the sampling schedules' shift
    assert bool(((shifted > 0) & (shifted < 1)).all())
    assert (plain > 0.9).float().mean() < 0.05 < 0.1 < (shifted > 0.9).float().mean()


def test_patch_discriminator_learns_sharp_from_blurred():
    """The GAN term's premise: a few steps teach the discriminator to tell sharp frames from
    blurred ones, and its generator loss sends gradient back to the fake frames."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from omnidit.shapes.world import random_batch
    from omnidit.training.patch_gan import PatchDiscriminator, discriminator_loss, generator_loss
    from omnidit.training.vae_train import to_video_tensor

    torch.manual_seed(0)
    _, img, _ = random_batch(np.random.default_rng(0), 16, frames=1, size=32)
    real = to_video_tensor(img)  # [16, 3, 1, 32, 32]
    blur = F.avg_pool2d(real[:, :, 0], 5, 1, 2).unsqueeze(2)
    disc = PatchDiscriminator(width=16)
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3, betas=(0.5, 0.9))
    with torch.no_grad():
        first = float(discriminator_loss(disc, real, blur))
    for _ in range(30):
        loss = discriminator_loss(disc, real, blur)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(discriminator_loss(disc, real, blur)) < 0.5 * first
    fake = blur.clone().requires_grad_(True)
    generator_loss(disc, fake).backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0


def test_vae_decoder_gan_finetune_keeps_encoder_and_resumes(tmp_path, capsys):
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.training.vae_train import VAETrainConfig, train_vae

    src = make_tiny_model_dir(tmp_path / "tiny") / "vae"
    cfg = dict(out=str(tmp_path / "gan"), init_from=str(src), decoder_only=True, gan_weight=0.1, gan_start=2,
               max_minutes=None, images_per_step=4, clips_per_step=1, clip_every=2, clip_frames=5,
               checkpoint_every=3, eval_n=4)
    train_vae(VAETrainConfig(max_steps=6, **cfg))
    rows = [r for r in _metrics(tmp_path / "gan" / "metrics.jsonl") if "l1" in r]
    assert [r["step"] for r in rows] == [3, 6]
    assert all(np.isfinite(r["gan_d"]) and np.isfinite(r["gan_g"]) for r in rows)
    ck = torch.load(tmp_path / "gan" / "checkpoint.pt", weights_only=False)
    assert "disc" in ck and "disc_opt" in ck
    folder = train_vae(VAETrainConfig(max_steps=9, **cfg))
    assert "resumed VAE training at step 6" in capsys.readouterr().out
    old, new = AutoencoderKLHunyuanVideo.from_pretrained(src), AutoencoderKLHunyuanVideo.from_pretrained(folder)
    assert new.config.scaling_factor == old.config.scaling_factor
    for (name, a), b in zip(old.encoder.state_dict().items(), new.encoder.state_dict().values()):
        assert torch.equal(a, b), name  # the latent space the DiT learned is untouched
    assert any(not torch.equal(a, b) for a, b in zip(old.decoder.state_dict().values(),
                                                       new.decoder.state_dict().values()))


def test_grown_vae_computes_the_same_and_fine_tunes_its_decoder(tmp_path):
    """--layers-per-block: added residual blocks start as identities, so the latent space a DiT
    learned and the decoder's output are unchanged until the decoder is fine-tuned."""
    import pytest
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.training.vae_train import VAETrainConfig, grow_layers, train_vae

    src = make_tiny_model_dir(tmp_path / "tiny") / "vae"
    old = AutoencoderKLHunyuanVideo.from_pretrained(src).eval()
    depth = old.config.layers_per_block
    grown = grow_layers(old, depth + 1).eval()
    assert grown.config.layers_per_block == depth + 1
    assert sum(p.numel() for p in grown.decoder.parameters()) > sum(p.numel() for p in old.decoder.parameters())
    x = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    with torch.no_grad():
        z = old.encode(x).latent_dist.mean
        assert torch.allclose(grown.encode(x).latent_dist.mean, z, atol=1e-6)
        assert torch.allclose(grown.decode(z).sample, old.decode(z).sample, atol=1e-6)
    with pytest.raises(ValueError, match="layers_per_block"):
        grow_layers(grown, depth)

    folder = train_vae(VAETrainConfig(out=str(tmp_path / "deep"), init_from=str(src), layers_per_block=depth + 1,
                                      decoder_only=True, max_steps=4, max_minutes=None, images_per_step=4,
                                      clips_per_step=0, checkpoint_every=2, eval_n=4))
    new = AutoencoderKLHunyuanVideo.from_pretrained(folder).eval()
    assert new.config.layers_per_block == depth + 1
    assert new.config.scaling_factor == old.config.scaling_factor
    with torch.no_grad():
        assert torch.allclose(new.encode(x).latent_dist.mean, z, atol=1e-6)  # same latents
        assert not torch.allclose(new.decode(z).sample, old.decode(z).sample, atol=1e-4)  # decoder trained


def test_train_vae_cli_rejects_layers_per_block_without_a_vae(tmp_path, capsys):
    import pytest

    from omnidit.cli import main

    src = make_tiny_model_dir(tmp_path / "tiny") / "vae"
    for argv, words in ((["--layers-per-block", "2"], ["--layers-per-block", "--init-from"]),
                        (["--layers-per-block", "0", "--init-from", str(src)], ["--layers-per-block", ">="]),
                        (["--layers-per-block", "2", "--init-from", str(tmp_path)], ["--init-from", "config.json"])):
        with pytest.raises(SystemExit) as e:
            raise SystemExit(main(["train", "vae", "--out", str(tmp_path / "x"), *argv]))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err


def test_4x_vae_and_patch_2_dit_train_export_and_generate(tmp_path):
    """--spatial-compression 4 --latent-channels 4 with --patch-size 2: 16x16x4 latents per 64x64
    frame, still 64 DiT tokens; the DiT takes its channels from the VAE and the exported folder generates."""
    import torch

    from omnidit.pipeline import Pipeline
    from omnidit.training.dit_train import SHAPES_SAMPLING, DiTTrainConfig, train_dit
    from omnidit.training.export import export_model
    from omnidit.training.vae_train import VAETrainConfig, make_vae, train_vae

    with torch.no_grad():
        z = make_vae(None, 4, 4).encode(torch.zeros(1, 3, 5, 64, 64)).latent_dist.mode()
    assert tuple(z.shape) == (1, 4, 2, 16, 16)

    vae = train_vae(VAETrainConfig(out=str(tmp_path / "vae"), max_steps=2, max_minutes=None, images_per_step=2,
                                   clips_per_step=1, clip_frames=5, eval_n=2, spatial_compression=4,
                                   latent_channels=4))
    conf = json.loads((vae / "config.json").read_text())
    assert conf["spatial_compression_ratio"] == 4 and conf["latent_channels"] == 4

    train_dit(DiTTrainConfig(
        out=str(tmp_path / "dit"), vae=str(vae), data="online", workers=0, image_batch=2, video_batch=1,
        video_frames=5, max_steps=2, max_minutes=None, checkpoint_every=2, eval_every=0, patch_size=2,
        overrides=dict(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                       rope_axes_dim=(4, 6, 6))))
    ck = torch.load(tmp_path / "dit" / "checkpoint.pt", weights_only=False)
    assert ck["dit_config"]["in_channels"] == ck["dit_config"]["out_channels"] == 4
    assert ck["dit_config"]["patch_size"] == 2

    model = export_model(tmp_path / "dit" / "checkpoint.pt", vae, tmp_path / "model", sampling=SHAPES_SAMPLING)
    frames = Pipeline.from_pretrained(model).generate("a red circle on a black background", steps=2).frames
    assert frames.shape[-3:] == (64, 64, 3)


def test_denoised_latents_are_the_dits_one_step_prediction(tmp_path):
    """DenoisedLatents: p_clean 0 gives x0 = x_s - s * v of the model's own guided velocity at a
    drawn noise level (the same numbers a sampler's last jump would give); the result is unscaled
    like the encoder's latents; a batch drawn with p_clean near 1 passes through untouched."""
    import pytest
    import torch

    from omnidit.distill.losses import guided_velocity
    from omnidit.sampling.flow import noised_from as noised
    from omnidit.training.denoised_latents import DenoisedLatents

    model = make_tiny_model_dir(tmp_path / "tiny")
    z = torch.randn(3, 4, 1, 4, 4)
    prompts = ["a red circle on a black background", "a blue square", "a green triangle"]
    d = DenoisedLatents(str(model), scaling_factor=2.0, device=torch.device("cpu"), sigma_range=(0.5, 0.5),
                        p_clean=0.0)
    out = d.denoise(z, prompts, torch.Generator().manual_seed(1))
    assert out.shape == z.shape and torch.isfinite(out).all()

    gen = torch.Generator().manual_seed(1)
    torch.rand(3, generator=gen), torch.rand(3, generator=gen)  # the levels and the clean draws
    sigma = torch.full((3,), 0.5)
    xs = noised(z * 2.0, sigma, gen)
    m = d.model
    v = guided_velocity(m.dit, xs, sigma, m.encode_text(prompts), m.encode_text([""] * 3),
                        torch.full((3,), m.config.guidance), "cfg")
    assert torch.allclose(out, (xs - 0.5 * v) / 2.0, atol=1e-5)
    assert not torch.allclose(out, z, atol=1e-2)

    keep = DenoisedLatents(str(model), scaling_factor=2.0, device=torch.device("cpu"), p_clean=0.999)
    assert torch.allclose(keep.denoise(z, prompts, torch.Generator().manual_seed(0)), z, atol=1e-6)
    with pytest.raises(ValueError, match="prompts"):
        d.denoise(z, prompts[:2], torch.Generator())
    with pytest.raises(ValueError, match="sigma_range"):
        DenoisedLatents(str(model), scaling_factor=1.0, device=torch.device("cpu"), sigma_range=(0.0, 0.5))


def test_vae_decoder_finetune_on_denoised_latents_keeps_encoder_and_resumes(tmp_path, capsys, monkeypatch):
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.training.denoised_latents import DenoisedLatents
    from omnidit.training.vae_train import VAETrainConfig, train_vae

    # The decoder must train on the DiT's reconstructions: every batch's latents pass through it.
    seen, real = [], DenoisedLatents.denoise

    def spy(self, z, prompts, gen):
        out = real(self, z, prompts, gen)
        seen.append((tuple(z.shape), len(prompts), bool((out != z).any())))
        return out

    monkeypatch.setattr(DenoisedLatents, "denoise", spy)
    model = make_tiny_model_dir(tmp_path / "tiny")
    cfg = dict(out=str(tmp_path / "dn"), init_from=str(model / "vae"), decoder_only=True, denoiser=str(model),
               max_minutes=None, images_per_step=4, clips_per_step=1, clip_every=2, clip_frames=5, lr=3e-3,
               checkpoint_every=3, eval_n=4, size=32)
    train_vae(VAETrainConfig(max_steps=6, **cfg))
    # 6 steps: 6 image batches [4, C, 1, h, w] and 3 clip batches (every 2nd step) [1, C, 2, h, w]
    assert [s[:2] for s in seen if s[0][0] == 4] == [((4, 4, 1, 4, 4), 4)] * 6
    assert [s[:2] for s in seen if s[0][0] == 1] == [((1, 4, 2, 4, 4), 1)] * 3
    assert all(changed for *_, changed in seen)  # the DiT's prediction, not the encoder's latents
    folder = train_vae(VAETrainConfig(max_steps=9, **cfg))
    assert "resumed VAE training at step 6" in capsys.readouterr().out
    rows = [r for r in _metrics(tmp_path / "dn" / "metrics.jsonl") if "l1" in r]
    assert [r["step"] for r in rows] == [3, 6, 9] and all(np.isfinite(r["l1"]) for r in rows)
    old, new = AutoencoderKLHunyuanVideo.from_pretrained(model / "vae"), AutoencoderKLHunyuanVideo.from_pretrained(folder)
    assert new.config.scaling_factor == old.config.scaling_factor
    for (name, a), b in zip(old.encoder.state_dict().items(), new.encoder.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(old.decoder.state_dict().values(),
                                                       new.decoder.state_dict().values()))


def test_train_vae_cli_rejects_bad_denoiser_arguments(tmp_path, capsys):
    import pytest

    from omnidit.cli import main

    model = make_tiny_model_dir(tmp_path / "tiny")
    base = ["--decoder-only", "--init-from", str(model / "vae")]
    for argv, words in ((["--denoiser", str(model)], ["--denoiser", "--decoder-only", "--init-from"]),
                        ([*base, "--denoiser", str(tmp_path / "nope")], ["--denoiser", "neither"]),
                        ([*base, "--denoiser", str(model), "--denoise-sigma", "0.5", "1.0"], ["--denoise-sigma"]),
                        ([*base, "--denoiser", str(model), "--denoise-p-clean", "1"], ["--denoise-p-clean"])):
        with pytest.raises(SystemExit) as e:
            raise SystemExit(main(["train", "vae", "--out", str(tmp_path / "x"), *argv]))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err


def test_pixel_weights_pick_out_object_outlines():
    import torch

    from omnidit.training.vae_train import pixel_weights

    x = -torch.ones(1, 3, 1, 12, 12)  # black frame
    x[:, 0, :, 3:9, 3:9] = 1.0  # a red 6x6 square
    w = pixel_weights(x, 10.0, 20.0)[0, 0, 0]
    assert w.shape == (12, 12)
    assert w[0, 0] == 1 and w[5, 5] == 11  # background, object interior
    assert w[3, 3] == 31 and w[2, 3] == 21 and w[3, 5] == 31  # outline: inside and outside rings
    assert int((w > 11).sum()) == 8 * 8 - 4 * 4  # a 2-pixel band around the square
    plain = pixel_weights(x, 10.0)[0, 0, 0]  # no edge term: objects and background only
    assert torch.equal(plain, torch.where((w == 11) | (w == 31), 11.0, 1.0))


def test_vae_decoder_learns_a_new_word_with_the_latent_space_unchanged(tmp_path):
    """--word: a share of every batch holds the new word; the decoder-only run keeps the encoder
    (the base DiT's latent space) and measures its reconstructions of the word's scenes."""
    import torch
    from diffusers import AutoencoderKLHunyuanVideo

    from omnidit.shapes import parse_prompt
    from omnidit.training.shapes_stream import stream_batches
    from omnidit.training.vae_train import VAETrainConfig, train_vae

    prompts, frames = next(stream_batches(8, frames=1, size=32, workers=0, word="cross", p_word=0.25))
    shapes = [[o.shape for o in parse_prompt(p).objects] for p in prompts]
    assert frames.shape == (8, 1, 32, 32, 3)
    assert ["cross" in s for s in shapes] == [True] * 2 + [False] * 6, shapes

    src = make_tiny_model_dir(tmp_path / "tiny") / "vae"
    folder = train_vae(VAETrainConfig(out=str(tmp_path / "cross"), init_from=str(src), decoder_only=True, word="cross",
                                      p_word=0.5, max_steps=3, max_minutes=None, images_per_step=4, clips_per_step=0,
                                      eval_n=4, size=32))
    last = _metrics(tmp_path / "cross" / "metrics.jsonl")[-1]
    assert 0.0 <= last["reconstruction_adherence_cross"]["shape"] <= 1.0
    old, new = AutoencoderKLHunyuanVideo.from_pretrained(src), AutoencoderKLHunyuanVideo.from_pretrained(folder)
    for (name, a), b in zip(old.encoder.state_dict().items(), new.encoder.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_vae_cli_rejects_a_bad_word_share(tmp_path, capsys):
    import pytest

    from omnidit.cli import main

    for argv, words in ((["--word", "cross", "--p-word", "1.5"], ["p_word", "[0, 1]"]),
                        (["--word", "hexagon"], ["--word", "cross"])):
        with pytest.raises(SystemExit) as e:
            raise SystemExit(main(["train", "vae", "--out", str(tmp_path / "x"), *argv]))
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, err
