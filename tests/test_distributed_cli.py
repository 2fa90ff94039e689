"""``panther-tune worker / finalize / status``: a shared run driven from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from panther.cli import main
from panther.tuner.storage import Lease, open_storage

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
model = "tiny_model:build_model"
model_kwargs = {{ hidden = {hidden}, epochs = 1 }}
accuracy = "tiny_model:accuracy"
speed = {{ evaluator = "flops", input_shape = [1, 32], inverse = true }}
threshold = {{ drop = 0.5 }}

[[layers]]
selector = {{ type = "Linear", range = [0, 2] }}
params = {{ num_terms = [1], low_rank = [2, 4] }}

[search]
n_trials = 2
seed = 0
study_name = "cli"
"""

pytestmark = pytest.mark.usefixtures("one_thread")


def write(tmp_path: Path, hidden: int = 64) -> Path:
    path = tmp_path / f"run{hidden}.toml"
    path.write_text(CONFIG.format(hidden=hidden))
    return path


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))


@pytest.mark.slow
def test_worker_status_finalize(tmp_path, examples, capsys):
    config = write(tmp_path)
    storage = f"journal://{tmp_path}/run.log"
    assert main(["worker", str(config), "--storage", storage, "--heartbeat", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert report["evaluated"] == 4 and report["ordinal"] == 0  # 2 groups x n_trials
    assert main(["status", str(config), "--storage", storage, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(s["group"], s["evaluated"], s["running"]) for s in status["studies"]] == \
        [("0", 2, 0), ("2", 2, 0)]
    assert status["budget"] == 2 and status["workers"] == []
    assert main(["status", str(config), "--storage", storage]) == 0
    table = capsys.readouterr().out
    assert "evaluated" in table and "2/2" in table and "0 live process(es)" in table
    out = tmp_path / "out"
    assert main(["finalize", str(config), "--storage", storage, "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.csv", "tuned_model.pt",
                                               "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verified"] is True


@pytest.mark.slow
def test_shared_run_errors_exit_with_the_right_status(tmp_path, examples, capsys):
    config = write(tmp_path)
    storage = f"journal://{tmp_path}/run.log"
    assert main(["worker", str(config), "--storage", f"sqlite:///{tmp_path}/no/such/x.db"]) == 2
    assert f"{tmp_path}/no/such" in capsys.readouterr().err
    assert main(["worker", str(config), "--storage", storage, "--device", "cuda:7"]) == 2
    assert "cuda:7" in capsys.readouterr().err
    assert main(["worker", str(config), "--storage", storage, "--heartbeat", "1"]) == 0
    capsys.readouterr()
    # Another model (other layer sizes) on the same run: refused, naming the difference.
    assert main(["worker", str(write(tmp_path, hidden=48)), "--storage", storage]) == 2
    assert "model parameter shapes" in capsys.readouterr().err
    lease = Lease(open_storage(storage), "cli#run", role="worker").acquire()
    try:
        assert main(["finalize", str(config), "--storage", storage,
                     "--output", str(tmp_path / "o")]) == 1
        assert "still work on the run" in capsys.readouterr().err
    finally:
        lease.release()


def test_status_needs_a_storage(tmp_path, capsys):
    config = write(tmp_path)
    assert main(["status", str(config)]) == 2
    assert "--storage" in capsys.readouterr().err
