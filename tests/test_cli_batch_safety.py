"""Content safety and labels in `omnidit generate` and batch jobs (in-process, tiny model, no Ray):
blocked prompts and outputs exit 2 in one line with no file, labels on written files, a bad
policy refused before anything starts; batch lines blocked before planning, outputs blocked by
the actor's hook, labels on batch outputs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from tiny_classifiers import make_image_classifier
from tiny_models import make_tiny_model_dir

from omnidit.batch import BatchConfig, parse_prompts
from omnidit.batch.manifest import line_error_row
from omnidit.batch.safety import finisher, moderate_prompts, moderator, safety_options
from omnidit.batch.worker import ChunkGenerator
from omnidit.cli import main
from omnidit.generation import read_video
from omnidit.safety import read_label

POLICY = {"blocked_terms": {"violence": ["kill"]}}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    root = tmp_path_factory.mktemp("policies")
    (root / "terms.json").write_text(json.dumps(POLICY))
    make_image_classifier(root / "nsfw", {"safe": 0.1, "nsfw": 0.9})
    (root / "outputs.yaml").write_text("output_classifier:\n  path: nsfw\n  thresholds: {nsfw: 0.5}\n")
    (root / "bad.yaml").write_text("patterns:\n  x: ['(']\n")
    return root


def test_generate_blocked_prompt_exits_2_in_one_line(model, policies, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = main(["generate", "K.I.L.L it", "--model", model, "--out", str(out), "--moderation",
                 str(policies / "terms.json")])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.strip().count("\n") == 0 and "category: violence" in err and "K.I.L.L" not in err
    audit = [json.loads(x) for x in (tmp_path / "moderation-audit.jsonl").read_text().splitlines()]
    assert audit[-1]["decision"] == "blocked" and "kill" not in json.dumps(audit).lower()


def test_generate_blocked_output_writes_no_file(model, policies, tmp_path, capsys):
    out = tmp_path / "x.png"
    code = main(["generate", "a red circle", "--model", model, "--out", str(out), "--steps", "1",
                 "--moderation", str(policies / "outputs.yaml")])
    assert code == 2 and not out.exists() and "generated output was blocked" in capsys.readouterr().err


def test_generate_labels_and_visible_label(model, tmp_path, capsys):
    plain, marked = tmp_path / "plain.png", tmp_path / "marked.png"
    assert main(["generate", "a red circle", "--model", model, "--out", str(plain), "--steps", "1"]) == 0
    assert main(["generate", "a red circle", "--model", model, "--out", str(marked), "--steps", "1",
                 "--visible-label", "AI", "--label-producer", "example.org"]) == 0
    assert read_label(plain)["ContentProducer"] == "omnidit"
    assert read_label(marked)["ContentProducer"] == "example.org"
    diff = (read_video(plain)[0] != read_video(marked)[0]).any(-1)
    assert diff.any() and not diff[: diff.shape[0] // 2].any()  # the label is in the bottom half only


@pytest.mark.parametrize("command", ["generate", "serve", "batch"])
def test_bad_policy_exits_2_before_anything_starts(command, model, policies, tmp_path, capsys):
    args = {"generate": ["generate", "a cat", "--model", model, "--out", str(tmp_path / "x.png")],
            "serve": ["serve", "--model", model, "--data-dir", str(tmp_path / "data")],
            "batch": ["batch", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "out"), "--model", model,
                      "--device", "cpu"]}[command]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n')
    assert main([*args, "--moderation", str(policies / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "patterns.x[0] is not a valid regular expression" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "x.png").exists()


def test_batch_prompts_blocked_before_planning(model, policies, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "a red circle"}\n{"id": "b", "prompt": "kill the circle"}\n'
                       '{"id": "c", "prompt": "a cat", "negative_prompt": "ｋｉｌｌ"}\n')
    cfg = BatchConfig(prompts=prompts, out=tmp_path / "out", model=model, moderation=str(policies / "terms.json"))
    parsed = moderate_prompts(parse_prompts(prompts), moderator(safety_options(cfg), "prompt"), model)
    assert [it.id for it in parsed.items] == ["a"]
    rows = [line_error_row(e, run="r") for e in parsed.errors]
    assert [(r["id"], r["line"], r["stage"], r["prompt"]) for r in rows] == [
        ("b", 2, "moderation", None), ("c", 3, "moderation", None)]
    assert "category: violence" in rows[0]["error"] and "kill" not in json.dumps(rows)
    audit = (tmp_path / "out" / "moderation-audit.jsonl").read_text()
    assert audit.count('"blocked"') == 2 and "kill" not in audit and "circle" not in audit


def _run_actor(actor: ChunkGenerator, items) -> list[tuple[dict, bytes]]:
    table = actor(pa.table({"chunk": [json.dumps([it.to_dict() for it in items])]}))
    return [(json.loads(r), d) for r, d in zip(table.column("result").to_pylist(), table.column("data").to_pylist())]


def test_batch_actor_blocks_outputs_and_labels_the_rest(model, policies, tmp_path):
    items = parse_prompts(_lines(tmp_path)).items
    blocked = ChunkGenerator(model, "cpu", 1, safety=safety_options(BatchConfig(
        prompts="p", out=tmp_path / "o1", moderation=str(policies / "outputs.yaml"))))
    results = _run_actor(blocked, items)
    assert [r["status"] for r, _ in results] == ["error", "error"]
    assert all("category: nsfw" in r["error"] and d == b"" for r, d in results)
    labelled = ChunkGenerator(model, "cpu", 1, safety=safety_options(BatchConfig(
        prompts="p", out=tmp_path / "o2", label_producer="batch.example", visible_label="AI")))
    (res, data), _ = _run_actor(labelled, items)
    (tmp_path / "a.png").write_bytes(data)
    label = read_label(tmp_path / "a.png")
    assert res["status"] == "ok" and label["ContentProducer"] == "batch.example"
    again = _run_actor(labelled, items)[0][1]
    assert again == data  # a resumed job writes the same bytes: the ProduceID comes from the content
    plain = _run_actor(ChunkGenerator(model, "cpu", 1), items)[0][1]
    (tmp_path / "b.png").write_bytes(plain)
    assert not np.array_equal(read_video(tmp_path / "a.png"), read_video(tmp_path / "b.png"))  # the visible label


def _lines(tmp_path):
    p = tmp_path / "lines.jsonl"
    p.write_text('{"id": "a", "prompt": "a red circle", "steps": 1}\n{"id": "b", "prompt": "a blue square", "steps": 1}\n')
    return p
