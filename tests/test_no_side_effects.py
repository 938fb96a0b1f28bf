"""Importing or using omnidit leaves other libraries' process-wide state as it found it.

(The fourth case, VideoVAE never rewiring the diffusers module it is given, is in test_vae.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.timeout(120)


def test_importing_the_demo_leaves_the_environment_alone():
    code = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        "import omnidit.demo.app\n"
        "print(json.dumps({k: [before.get(k), os.environ.get(k)] for k in set(before) | set(os.environ)\n"
        "                  if before.get(k) != os.environ.get(k)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GRADIO_ANALYTICS_ENABLED"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_the_demo_turns_analytics_off_for_its_own_app_only():
    from omnidit.demo.app import DemoConfig, build_app

    assert build_app(DemoConfig(api_url="http://127.0.0.1:9")).analytics_enabled is False


def test_loading_a_text_encoder_leaves_progress_bars_as_they_were(monkeypatch):
    import huggingface_hub.constants
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    from omnidit.tokenizers import SentenceTextEncoder

    if huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS is not None:
        pytest.skip("HF_HUB_DISABLE_PROGRESS_BARS is set: the progress-bar switches are fixed for the process")
    seen = []
    real = transformers.AutoModel.from_pretrained

    def spy(*args, **kwargs):
        seen.append(hf_logging.is_progress_bar_enabled() or not are_progress_bars_disabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", spy)
    start = hf_logging.is_progress_bar_enabled()
    try:
        for enabled in (True, False):
            (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
            SentenceTextEncoder.from_path()
            assert (hf_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == (enabled, not enabled)
    finally:
        (hf_logging.enable_progress_bar if start else hf_logging.disable_progress_bar)()
    assert seen == [False, False]  # quiet while loading, either way


def sdpa_flags() -> tuple[bool, bool, bool, bool]:
    cuda = torch.backends.cuda
    return (cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.cudnn_sdp_enabled(),
            cuda.math_sdp_enabled())


def test_reference_attention_is_scoped(monkeypatch):
    from omnidit.training.common import reference_attention

    before = sdpa_flags()
    with reference_attention():  # no CUDA here: nothing to switch
        assert sdpa_flags() == before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    math_only = (False, False, False, True)
    with reference_attention():
        assert sdpa_flags() == math_only
    assert sdpa_flags() == before

    @reference_attention()
    def train() -> tuple[bool, bool, bool, bool]:
        return sdpa_flags()

    assert train() == math_only and sdpa_flags() == before
    with pytest.raises(RuntimeError), reference_attention():
        raise RuntimeError("a failing step")
    assert sdpa_flags() == before
