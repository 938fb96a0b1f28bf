"""Content safety and AIGC labels without a model: policies, normalisation tricks, the classifier path
with tiny local classifiers, the audit log, implicit labels read back by `omnidit verify` and by
generic readers (Pillow, ffmpeg), the visible label on the pixels."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from tiny_classifiers import make_image_classifier, make_text_classifier

from omnidit.cli import main
from omnidit.generation import Generation
from omnidit.safety import (AuditLog, ContentBlocked, Moderator, PolicyError, draw_visible_label, load_policy,
                            parse_policy, prompt_hash, read_label)
from omnidit.safety.labels import KEYS, XMP_NS

POLICY = {"blocked_terms": {"violence": ["kill", "blow up"], "gore": ["暴力"]},
          "patterns": {"personal_data": [r"\b\d{3}-\d{2}-\d{4}\b"]},
          "low": {"allow": ["personal_data"]}}


def _blocked(mod: Moderator, text: str, **kw) -> str | None:
    try:
        mod.check_prompt({"prompt": text}, **kw)
    except ContentBlocked as e:
        return e.category
    return None


@pytest.mark.parametrize("text", [
    "KILL the lights", "ｋｉｌｌ", "k i l l", "k.i.l.l", "k-i_l*l", "k1ll", "k\u200bill", "kíll", "Blow-Up a car",
    "blowup", "b l o w  u p",
])
def test_blocked_terms_survive_normalisation_tricks(text):
    assert _blocked(Moderator(parse_policy(POLICY)), text) == "violence"


@pytest.mark.parametrize("text", ["a skill tree", "killer whale", "skilled", "a cat on a mat", "blow dryer"])
def test_word_boundaries_keep_innocent_prompts(text):
    assert _blocked(Moderator(parse_policy(POLICY)), text) is None


def test_unspaced_scripts_patterns_and_low_strictness():
    mod = Moderator(parse_policy(POLICY))
    assert _blocked(mod, "很暴力的画面") == "gore"  # CJK: a substring, no word boundaries
    assert _blocked(mod, "ssn 123-45-6789") == "personal_data"
    assert _blocked(mod, "ssn １２３-４５-６７８９") == "personal_data"  # full-width digits, on the folded text
    assert _blocked(mod, "ssn 123-45-6789", level="low") is None  # low.allow
    assert _blocked(mod, "kill", level="low") == "violence"  # not in low.allow
    with pytest.raises(ValueError, match=r"moderation must be one of \['auto', 'low'\], got 'high'"):
        mod.check_prompt({"prompt": "a cat"}, level="high")


def test_negative_prompt_is_checked_and_named():
    mod = Moderator(parse_policy(POLICY))
    with pytest.raises(ContentBlocked) as e:
        mod.check_prompt({"prompt": "a cat", "negative_prompt": "kill"})
    assert (e.value.param, e.value.category) == ("negative_prompt", "violence")
    assert "kill" not in str(e.value) and "violence" in str(e.value)


@pytest.mark.parametrize("obj,match", [
    ({"blocked_terms": ["kill"]}, "blocked_terms must be a mapping"),
    ({"blocked_terms": {"v": "kill"}}, r"blocked_terms.v must be a list"),
    ({"patterns": {"p": ["(unclosed"]}}, r"patterns.p\[0\] is not a valid regular expression"),
    ({"blocked": {}}, r"unknown keys \['blocked'\]"),
    ({"prompt_classifier": {"path": "/nonexistent", "thresholds": {"x": 0.5}}}, "not a local transformers model"),
    ({"low": {"thresholds": {"x": 2}}}, r"low.thresholds.x must be a number in \(0, 1\]"),
])
def test_bad_policies_name_the_key(obj, match):
    with pytest.raises(PolicyError, match=match):
        parse_policy(obj)


def test_yaml_and_json_files(tmp_path):
    (tmp_path / "p.yaml").write_text("blocked_terms:\n  violence: [kill]\n")
    (tmp_path / "p.json").write_text(json.dumps(POLICY))
    assert _blocked(Moderator(load_policy(tmp_path / "p.yaml")), "KILL") == "violence"
    assert _blocked(Moderator(load_policy(tmp_path / "p.json")), "k i l l") == "violence"
    (tmp_path / "p.txt").write_text("{}")
    with pytest.raises(PolicyError, match="use a .json, .yaml or .yml file"):
        load_policy(tmp_path / "p.txt")


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    root = tmp_path_factory.mktemp("classifiers")
    return (make_text_classifier(root / "text", {"safe": 0.1, "toxic": 0.9}),
            make_image_classifier(root / "image", {"safe": 0.2, "nsfw": 0.8}))


def test_classifier_path_with_thresholds_and_strictness(classifiers, tmp_path):
    text, image = classifiers
    policy = {"prompt_classifier": {"path": str(text), "thresholds": {"toxic": 0.85}},
              "output_classifier": {"path": str(image), "thresholds": {"nsfw": 0.75}, "frames": 2},
              "low": {"thresholds": {"toxic": 0.95, "nsfw": 0.9}}}
    mod = Moderator(parse_policy(policy))
    frames = np.zeros((5, 32, 32, 3), np.uint8)
    assert _blocked(mod, "a cat") == "toxic"  # 0.9 >= 0.85
    assert _blocked(mod, "a cat", level="low") is None  # 0.9 < 0.95
    with pytest.raises(ContentBlocked, match=r"generated output was blocked .*category: nsfw"):
        mod.check_output(frames)
    mod.check_output(frames, level="low")  # 0.8 < 0.9
    lenient = Moderator(parse_policy({**policy, "prompt_classifier": {"path": str(text),
                                                                      "thresholds": {"toxic": 0.95}}}))
    assert _blocked(lenient, "a cat") is None
    # A threshold naming a label the classifier does not have is an error at load time, naming both.
    with pytest.raises(ValueError, match=r"has no labels \['violent'\]; its labels: \['safe', 'toxic'\]"):
        Moderator(parse_policy({"prompt_classifier": {"path": str(text), "thresholds": {"violent": 0.5}}}))
    # Each stage loads only its own classifier (an ingress never holds the image model).
    assert not Moderator(parse_policy(policy), stages=("prompt",)).checks_outputs


def test_input_images_are_checked_by_the_image_classifier(classifiers, tmp_path):
    """Image inputs (image-to-video's start image) go through the output classifier and its thresholds
    before anything is queued; the ingress loads it on the first input image only."""
    _, image = classifiers
    policy = parse_policy({"output_classifier": {"path": str(image), "thresholds": {"nsfw": 0.75}},
                           "low": {"thresholds": {"nsfw": 0.9}}})
    log = AuditLog(tmp_path / "audit.jsonl", b"k" * 32)
    mod = Moderator(policy, audit=log, stages=("prompt", "input"))
    assert mod.checks_inputs and not mod.checks_outputs  # not loaded yet
    start = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ContentBlocked) as e:
        mod.check_input(start, prompt="a cat", request_id="req_9")
    assert str(e.value) == "the input_reference image was blocked by the content policy (category: nsfw)"
    assert (e.value.stage, e.value.param, e.value.code) == ("input", "input_reference", "content_policy_violation")
    mod.check_input(start, level="low", request_id="req_10")  # 0.8 < 0.9
    rows = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["id"], r["stage"], r["decision"], r["category"], r["field"]) for r in rows] == [
        ("req_9", "input", "blocked", "nsfw", "input_reference"), ("req_10", "input", "allowed", None,
                                                                   "input_reference")]
    Moderator(parse_policy(POLICY), stages=("input",)).check_input(start)  # no image classifier: no check
    with pytest.raises(ValueError, match="moderation stages must be among"):
        Moderator(policy, stages=("inputs",))


def test_audit_log_has_no_prompt_text_or_term(tmp_path):
    key = b"k" * 32
    log = AuditLog(tmp_path / "audit.jsonl", key)
    mod = Moderator(parse_policy(POLICY), audit=log)
    secret = "please kill my neighbour, Zebulon"
    with pytest.raises(ContentBlocked):
        mod.check_prompt({"prompt": secret}, request_id="req_1")
    mod.check_prompt({"prompt": "a quiet lake"}, request_id="req_2")
    text = (tmp_path / "audit.jsonl").read_text()
    rows = [json.loads(line) for line in text.splitlines()]
    assert [(r["id"], r["decision"], r["category"], r["stage"]) for r in rows] == [
        ("req_1", "blocked", "violence", "prompt"), ("req_2", "allowed", None, "prompt")]
    assert rows[0]["prompt_hmac"] == prompt_hash(key, secret) != prompt_hash(b"x" * 32, secret)
    assert rows[0]["time"].endswith("Z") and rows[0]["check"] == "terms"
    for word in ("kill", "Zebulon", "neighbour", "lake"):
        assert word.casefold() not in text.casefold()


def _frames(n=1, h=32, w=32):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".gif", ".mp4"])
def test_implicit_label_read_back_by_verify(suffix, tmp_path, capsys):
    frames = _frames(1 if suffix in (".png", ".jpg", ".webp") else 5)
    path = Generation(frames, info={"model": "/models/shapes-turbo"}).save(tmp_path / f"out{suffix}")
    label = read_label(path)
    assert list(label) == list(KEYS)
    assert label["Label"] == "1" and label["ContentProducer"] == "omnidit"
    assert label["ReservedCode1"] == "model=shapes-turbo" and len(label["ProduceID"]) == 32
    assert main(["verify", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["AIGC"] == label


def test_generic_readers_see_the_label(tmp_path):
    from PIL import Image

    png = Generation(_frames(1), info={"model": "shapes"}).save(tmp_path / "a.png")
    info = Image.open(png).info
    assert json.loads(info["AIGC"])["Label"] == "1"
    assert XMP_NS in info["XML:com.adobe.xmp"] and "TC260:AIGC" in info["XML:com.adobe.xmp"]
    mp4 = Generation(_frames(5), info={"model": "shapes"}).save(tmp_path / "a.mp4")
    import imageio_ffmpeg

    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(mp4), "-f", "ffmetadata", "-"],
                         capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("AIGC="))
    assert '"Label":"1"' in line.replace("\\", "") and read_label(mp4)["ProduceID"] in line


def test_unlabelled_files_fail_verify(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(_frames(1)[0]).save(tmp_path / "plain.png")
    assert read_label(tmp_path / "plain.png") is None
    assert main(["verify", str(tmp_path / "plain.png")]) == 1
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["verify", str(tmp_path / "notes.txt")]) == 2
    assert main(["verify", str(tmp_path / "missing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_visible_label_on_the_pixels():
    frames = np.full((5, 64, 64, 3), 200, np.uint8)
    ends = draw_visible_label(frames, "AI")
    changed = (ends != frames).any(axis=(1, 2, 3))
    assert changed.tolist() == [True, False, False, False, True]
    ys, xs = np.nonzero((ends[0] != frames[0]).any(-1))
    assert ys.min() >= 32 and xs.min() >= 32  # bottom-right corner only
    assert (ends[0][ys, xs] < 200).any() and (ends[0][ys, xs] > 200).any()  # dark box, light text
    assert (draw_visible_label(frames, "AI", which="all") != frames).any(axis=(1, 2, 3)).all()
    top_left = draw_visible_label(frames, "AI", corner="top-left")
    ys, xs = np.nonzero((top_left[0] != frames[0]).any(-1))
    assert ys.max() < 32 and xs.max() < 32
    with pytest.raises(ValueError, match=r"must be one of \['ends', 'all'\]"):
        draw_visible_label(frames, "AI", which="middle")
