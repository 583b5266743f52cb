"""The report (minipeft/experiments/report.py): README.md decides every finding and shows every
plot, and results.json holds what the runs returned."""

import json

import pytest

from minipeft.experiments import findings as fx, report

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_setting_runs_with_every_seed_and_the_report_decides_every_finding(quick_run):
    folders, out, results = quick_run
    assert list(results["runs"]) == list(fx.SETTINGS)
    assert all([r["seed"] for r in runs] == [0, 1] for runs in results["runs"].values())
    assert set(results["sweep"]) == {f"{task}/{m}/{fx.SWEEP_LRS[m][1]}" for task, ms in fx.SWEEP.items() for m in ms}
    readme = (out / "README.md").read_text()
    for finding in fx.FINDINGS:
        row = next(line for line in readme.splitlines() if f"| {finding.claim} |" in line)
        assert row.endswith(("**reproduced** |", "**refuted** |", "**inconclusive** |")), row
    for name in report.RESULT_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes().startswith(b"\x89PNG\r\n"), name
            assert f"![{name}]({name})" in readme
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results))
