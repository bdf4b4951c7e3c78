"""The experiment scripts write where they are told, and leave the tracked results in docs/ alone
unless told `--out docs` (issue 17: a run used to overwrite them)."""
import sys
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
SCRIPTS = sorted(p for p in EXPERIMENTS.glob("*.py") if p.name != "common.py")


@pytest.fixture
def common(monkeypatch):
    monkeypatch.syspath_prepend(str(EXPERIMENTS))
    import common
    return common


@pytest.mark.parametrize("argv, folder", [([], "experiment-results"), (["--out", "mine"], "mine")])
def test_reports_go_to_the_out_folder(common, tmp_path, monkeypatch, argv, folder):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["x.py", *argv])
    out = common.output_folder("An experiment.")
    common.write_report(out, "trial", "Trial", "settings", "| a |", started=0.0)
    assert (tmp_path / folder / "experiments" / "trial.md").read_text().startswith("# Trial")
    assert common.figure_path(out, "trial") == Path(folder) / "figures" / "trial.png"
    assert (tmp_path / folder / "figures").is_dir()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_writes_under_its_out_folder(script):
    source = script.read_text()
    assert "out = output_folder(__doc__)" in source
    assert f'figure_path(out, "{script.stem}")' in source
    assert f'write_report(out, "{script.stem}"' in source
