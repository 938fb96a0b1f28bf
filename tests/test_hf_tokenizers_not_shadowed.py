"""`import tokenizers` must always be Hugging Face's package, never omnidit/tokenizers/."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "omnidit"

CHECK = """
import sys, tokenizers
assert hasattr(tokenizers, "Tokenizer"), tokenizers.__file__
from tokenizers import Tokenizer, models, pre_tokenizers  # submodules resolve to HF too
assert "omnidit" not in tokenizers.__file__, tokenizers.__file__
import omnidit.tokenizers as ours
assert ours is not tokenizers and hasattr(ours, "VideoVAE")
print(tokenizers.__file__)
"""


def run(code: str, cwd: Path, extra_path: list[Path]) -> subprocess.CompletedProcess:
    prefix = f"import sys; sys.path[:0] = {[str(p) for p in extra_path]!r}\n"
    return subprocess.run(
        [sys.executable, "-c", prefix + code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_import_tokenizers_is_hugging_face():
    proc = run(CHECK, REPO, [REPO])  # the repo root first on sys.path
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Path(proc.stdout.strip()).parent.parent != PKG


@pytest.mark.parametrize(
    "cwd,extra_path",
    [
        (REPO, [PKG, REPO]),  # the omnidit folder itself ahead of site-packages
        (PKG, [REPO]),  # a script started from inside omnidit/ ('' = omnidit/ on sys.path)
    ],
)
def test_omnidit_folder_on_path_fails_loudly_instead_of_shadowing(cwd, extra_path):
    """With omnidit/ itself on sys.path our folder would be found as `tokenizers`; it refuses to
    stand in for Hugging Face's package and says how to fix the path."""
    for code in ("import tokenizers", "from transformers import PreTrainedTokenizerFast"):
        proc = run(code, cwd, extra_path)
        assert proc.returncode != 0
        assert "ImportError" in proc.stderr and "omnidit/ itself is on sys.path" in proc.stderr, proc.stderr[-2000:]


def test_in_process_modules_are_distinct():
    import tokenizers

    import omnidit.tokenizers as ours

    assert hasattr(tokenizers, "Tokenizer") and not hasattr(ours, "Tokenizer")
    assert Path(tokenizers.__file__).parent != Path(ours.__file__).parent
