"""FP8 weight storage (omnidit/dit/fp8.py): what is stored in float8, the bytes saved, the error."""

from __future__ import annotations

import pytest
import torch
from test_dit_parity import make_inputs, make_pair, tiny
from tolerances import rel_err

from omnidit.dit import DiT, preset
from omnidit.dit.fp8 import FP8, FP8Linear, fp8_targets, model_bytes, quantize, swap_to_fp8


def test_quantize_per_channel_roundtrip():
    w = torch.randn(16, 32) * torch.logspace(-3, 2, 16)[:, None]  # rows of very different scales
    q, s = quantize(w)
    assert q.dtype == FP8 and s.shape == (16,)
    back = q.float() * s[:, None]
    assert ((back - w).abs() / w.abs().amax(1, keepdim=True)).max() < 2**-3  # e4m3: 3 mantissa bits


def test_hunyuan_video_fp8_is_at_most_055x_bf16():
    with torch.device("meta"):
        bf16 = DiT(preset("hunyuan-video")).to(torch.bfloat16)
        fp8 = DiT(preset("hunyuan-video")).to(torch.bfloat16)
    swap_to_fp8(fp8, list(fp8_targets(fp8)))
    ratio = model_bytes(fp8) / model_bytes(bf16)
    assert 0.45 < ratio <= 0.55, ratio


def test_from_pretrained_fp8_loads_blocks_in_fp8_close_to_fp32(tmp_path):
    cfg = tiny()
    ref, ours = make_pair(cfg, seed=1)
    ref.save_pretrained(tmp_path)
    q = DiT.from_pretrained(tmp_path, weights="fp8")
    lin = [m for n, m in q.named_modules() if isinstance(m, FP8Linear)]
    assert lin and all(m.weight.dtype == FP8 for m in lin)
    assert not any(isinstance(m, FP8Linear) for n, m in q.named_modules() if not n.startswith(
        ("transformer_blocks.", "single_transformer_blocks.")))  # embedders, refiner, output stay
    inputs = make_inputs(cfg, 2, (2, 4, 6), [3, 6], 6)
    with torch.no_grad():
        want, got = ours(**inputs), q(**inputs)
    err = rel_err(got, want)
    assert 1e-6 < err < 0.1, err  # quantised (not the fp32 weights), yet close
    with pytest.raises(ValueError, match="weights must be one of"):
        DiT.from_pretrained(tmp_path, weights="int4")
    assert DiT.from_pretrained(tmp_path, weights="bf16").x_embedder.proj.weight.dtype == torch.bfloat16
