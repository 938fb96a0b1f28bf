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


def run(code: str, cwd: Path, extra_path: list[Path]) -> str:
    prefix = f"import sys; sys.path[:0] = {[str(p) for p in extra_path]!r}\n"
    proc = subprocess.run(
        [sys.executable, "-c", prefix + code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.mark.parametrize(
    "cwd,extra_path",
    [
        (REPO, [REPO]),  # the repo root first on sys.path
        (REPO, [PKG, REPO]),  # the omnidit folder itself ahead of site-packages
        (PKG, [REPO]),  # a script started from inside omnidit/ ('' = omnidit/ on sys.path)
    ],
)
def test_import_tokenizers_is_hugging_face(cwd, extra_path):
    out = run(CHECK, cwd, extra_path)
    assert Path(out.strip()).parent.parent != PKG


def test_transformers_works_with_omnidit_folder_on_path():
    code = (
        "from transformers import PreTrainedTokenizerFast\n"
        "from tokenizers import Tokenizer, models\n"
        "tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({'[UNK]': 0, 'hi': 1}, unk_token='[UNK]')))\n"
        "print(tok.convert_tokens_to_ids('hi'))\n"
    )
    assert run(code, PKG, [PKG, REPO]).strip() == "1"


def test_in_process_modules_are_distinct():
    import tokenizers

    import omnidit.tokenizers as ours

    assert hasattr(tokenizers, "Tokenizer") and not hasattr(ours, "Tokenizer")
    assert Path(tokenizers.__file__).parent != Path(ours.__file__).parent
