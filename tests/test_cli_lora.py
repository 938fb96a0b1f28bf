"""`omnidit generate --lora PATH[:SCALE]` as a user runs it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_cli import run
from test_lora_runtime import adapter
from tiny_models import make_tiny_model_dir

from omnidit.cli.common import UserError
from omnidit.cli.lora_flags import lora_specs
from omnidit.dit import DiT
from omnidit.generation import read_video


def test_lora_values(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "sub" / "a.safetensors"
    b.parent.mkdir()
    a.write_bytes(b"")
    b.write_bytes(b"")
    assert lora_specs([str(a)]) == {"a": (a, 1.0)}
    assert lora_specs([f"{a}:-0.25"]) == {"a": (a, -0.25)}
    for specs, words in [([f"{a}:lots"], "SCALE must be a number"), ([f"{a}:inf"], "finite"),
                         ([str(tmp_path / "missing.safetensors")], "does not exist"),
                         ([str(a), f"{b}:0.5"], "two adapters are named 'a'")]:
        with pytest.raises(UserError, match=words):
            lora_specs(specs)


def test_generate_with_loras_and_a_bad_file_exits_2(tmp_path):
    model = make_tiny_model_dir(tmp_path / "m", sampling={"steps": 3})
    dit = DiT.from_pretrained(model / "transformer")
    save_file(adapter(dit, 1), tmp_path / "style.safetensors")
    save_file(adapter(dit, 2, rank=2), tmp_path / "other.safetensors")
    save_file({"transformer.nope.lora_A.weight": torch.zeros(2, 2)}, tmp_path / "bad.safetensors")
    outs = {}
    for name, extra in [("base", []), ("both", ["--lora", f"{tmp_path / 'style.safetensors'}:0.5", "--lora",
                                                str(tmp_path / "other.safetensors")])]:
        r = run("generate", "a red circle", "--model", str(model), "--seed", "3", "--out", str(tmp_path / f"{name}.png"),
                *extra)
        assert r.returncode == 0, r.stderr
        outs[name] = read_video(tmp_path / f"{name}.png")
    assert not np.array_equal(outs["both"], outs["base"])
    r = run("generate", "a red circle", "--model", str(model), "--out", str(tmp_path / "x.png"), "--lora",
            str(tmp_path / "bad.safetensors"))
    assert r.returncode == 2 and "match no Linear" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
