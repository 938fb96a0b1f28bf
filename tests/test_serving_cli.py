"""`omnidit serve` argument handling: user errors are one line (UserError -> exit 2) before Ray starts."""

from __future__ import annotations

import json
import socket

import pytest

from omnidit.cli import build_parser
from omnidit.cli.common import UserError
from omnidit.cli.serve import settings as _settings


def _parse(argv):
    return build_parser("serve").parse_args(["serve", *argv])


@pytest.fixture
def model(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "model_index.json").write_text(json.dumps({}))  # resolve_model only needs the index
    return str(tmp_path / "m")


def test_defaults_and_flags(model, tmp_path, monkeypatch):
    monkeypatch.delenv("OMNIDIT_API_KEY", raising=False)
    s = _settings(_parse(["--model", model, "--data-dir", str(tmp_path / "d"), "--port", "18999",
                          "--retention", "7d", "--max-batch-size", "1", "--log-prompts", "--device", "cpu"]))
    assert s.retention_s == 7 * 86400 and s.max_batch_size == 1 and s.log_prompts and s.api_key is None
    assert s.gpus_per_replica == 0 and s.store_url == f"sqlite:///{tmp_path / 'd' / 'jobs.db'}"
    monkeypatch.setenv("OMNIDIT_API_KEY", "from-env")
    assert _settings(_parse(["--model", model, "--port", "18999"])).api_key == "from-env"
    assert _settings(_parse(["--model", model, "--port", "18999", "--api-key", "flag"])).api_key == "flag"
    par = _settings(_parse(["--model", model, "--port", "18999", "--device", "cpu", "--ulysses-degree", "2",
                            "--cfg-parallel"]))
    assert (par.ulysses_degree, par.ring_degree, par.cfg_parallel, par.workers_per_replica) == (2, 1, True, 4)
    assert par.gpus_per_replica == 0  # CPU: the 4 workers use gloo


@pytest.mark.parametrize("argv,match", [
    (["--model", "/no/such/model"], "neither a shipped model"),
    (["--retention", "soon"], "retention"),
    (["--gpus-per-replica", "2"], "sequence-parallel worker group"),
    (["--ring-degree", "2", "--gpus-per-replica", "1"], "0 .CPU workers, gloo. or 2"),
    (["--max-batch-size", "0"], "max_batch_size"),
    (["--job-store", "mysql://x"], "job_store"),
    (["--device", "cuda", "--gpus-per-replica", "0"], "gpus-per-replica"),
])
def test_user_errors(model, argv, match):
    argv = argv if argv[:1] == ["--model"] else ["--model", model, *argv]
    with pytest.raises(UserError, match=match):
        _settings(_parse(argv))


def test_bad_port_exits_2_in_one_line(model, capsys):
    with pytest.raises(SystemExit) as e:
        _parse(["--model", model, "--port", "70000"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == \
        "omnidit serve: error: argument --port: --port must be in [1, 65535], got 70000"


def test_port_in_use_is_a_user_error(model):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(UserError, match="already in use"):
            _settings(_parse(["--model", model, "--port", str(port)]))
