"""Batch lines with a `lora` key and `omnidit batch --lora` (no Ray: lines, planning and the actor's work)."""

from __future__ import annotations

import numpy as np
from safetensors.torch import save_file
from test_lora_runtime import adapter

from omnidit import Pipeline
from omnidit.batch.lines import LineError, ParsedPrompts, parse_line
from omnidit.batch.plan import plan_job
from omnidit.batch.worker import ChunkGenerator, generate_chunk
from omnidit.generation import read_video


def test_lora_key_is_normalised_checked_and_in_the_group_key():
    a = parse_line('{"id": "a", "prompt": "a red circle", "lora": {"ink": 1, "neon": 0}}', 1, loras=["ink", "neon"])
    b = parse_line('{"id": "b", "prompt": "a red circle", "lora": {"ink": 1.0}}', 2, loras=["ink", "neon"])
    c = parse_line('{"id": "c", "prompt": "a red circle"}', 3, loras=["ink", "neon"])
    assert a.lora == b.lora == '{"ink": 1.0}' and c.lora is None
    assert a.group_key == b.group_key != c.group_key
    plan = plan_job(ParsedPrompts([a, b, c], []), [], ".", model="m", batch_size=4)
    assert sorted(len(ch) for ch in plan.chunks) == [1, 2]  # adapter sets never share a chunk
    unplugged = parse_line('{"id": "c", "prompt": "a red circle"}', 3)
    assert unplugged.fingerprint("m") == c.fingerprint("m")  # lines without lora keep their fingerprints
    bad = parse_line('{"prompt": "x", "lora": {"oak": 1}}', 4, loras=["ink", "neon"])
    assert isinstance(bad, LineError) and "unknown adapter 'oak'; available: ['ink', 'neon']" in bad.message
    bad = parse_line('{"prompt": "x", "lora": {"ink": 99}}', 5, loras=["ink"])
    assert isinstance(bad, LineError) and "lora['ink'] must be a number in [-10, 10]" in bad.message


def test_actor_applies_each_lines_adapters_and_the_job_default(tiny_model_dirs, tmp_path):
    model = tiny_model_dirs["euler"]
    ref = Pipeline.from_pretrained(model, device="cpu")
    (tmp_path / "dir").mkdir()
    ink, neon = tmp_path / "ink.safetensors", tmp_path / "dir" / "neon.safetensors"
    save_file(adapter(ref.dit, 1), ink)
    save_file(adapter(ref.dit, 2), neon)
    actor = ChunkGenerator(model, "cpu", loras={"ink": [str(ink), 0.5]}, lora_dir=str(tmp_path / "dir"))
    line = '{{"id": "{}", "prompt": "a red circle", "seed": 1, "steps": 2{}}}'
    want = {"default": ("", {"ink": 0.5}), "none": (', "lora": {}', {}),
            "neon": (', "lora": {"neon": 1}', {"neon": 1.0})}
    ref.load_lora(ink, name="ink")
    ref.load_lora(neon, name="neon")
    frames = {}
    for k, (extra, loras) in want.items():
        item = parse_line(line.format(k, extra), 1, loras=["ink", "neon"])
        ((result, data),) = generate_chunk(actor.pipe, [item], None, actor.loras)
        assert result["status"] == "ok", result
        (tmp_path / f"{k}.png").write_bytes(data)
        frames[k] = read_video(tmp_path / f"{k}.png")
        assert np.array_equal(frames[k], ref.generate("a red circle", seed=1, steps=2, loras=loras).frames), k
    assert not np.array_equal(frames["default"], frames["none"])
    assert not np.array_equal(frames["neon"], frames["none"])
