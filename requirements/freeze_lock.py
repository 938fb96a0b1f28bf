"""Write requirements/lock.txt from the packages installed in the current environment.

Run by `make lock` inside a fresh venv that installed omnidit with every extra at the newest
versions pyproject.toml allows. omnidit itself is left out (it is installed editable from
the checkout), and torch's local build tag (`+cpu`, `+cu128`) is dropped so one lock serves a
CPU machine (the local CPU wheel) and a GPU machine (PyPI's CUDA build) alike.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEADER = """\
# Exact versions the test suite passes with; `make install` installs these.
# Regenerate with `make lock` (a fresh venv at the newest versions pyproject.toml allows),
# then run `make test` before committing the new lock. `make test-latest` tries the newest
# versions without touching this file.
"""


def main(out: str) -> None:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            check=True, capture_output=True, text=True).stdout.splitlines()
    lines = []
    for line in frozen:
        if not line or line.startswith("#") or "==" not in line:
            continue
        name, version = line.split("==", 1)
        if name.lower() == "omnidit":
            continue
        if name.lower() == "torch":
            version = version.split("+", 1)[0]
        lines.append(f"{name}=={version}")
    lines.sort(key=str.lower)
    Path(out).write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {out}: {len(lines)} packages")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "requirements/lock.txt")
