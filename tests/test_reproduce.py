"""reproduce.py, the one command of the reproductions: --quick runs the whole pipeline (pretraining
the three backbones with train_char.py included) and an --out holding results is never replaced
unasked."""

import os

import pytest

import reproduce
from minipeft import experiments as ex
from minipeft.experiments import runs as rx
from tests.experiments_common import make_backbones

pytestmark = pytest.mark.usefixtures("one_thread")


def errors_of(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def test_quick_pretrains_the_three_backbones_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "out"
    reproduce.main(["--quick", "--out", str(out), "--no-progress"])
    for folder in ex.backbone_folders(str(out / "backbones")).values():
        assert os.path.isfile(os.path.join(folder, "model", "model.safetensors")), folder
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith(f"written to {out}{os.sep}: " + ", ".join(ex.RESULT_FILES))
    assert "| BitFit | BitFit lands closer to full fine-tuning than to the frozen model |" in (out / "README.md").read_text()
    # a second run reuses the backbones (train_char.py's cache) and, asked to, replaces the results
    reproduce.main(["--quick", "--out", str(out), "--no-progress", "--overwrite"])
    printed = capsys.readouterr().out
    assert printed.count("reusing the pretrained model") == 3 and "--overwrite: removed the earlier results" in printed


@pytest.fixture
def ready(tmp_path):
    make_backbones(tmp_path / "backbones")
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("an earlier report")
    return tmp_path / "backbones", out


@pytest.mark.parametrize("flags, message", [
    ([], "already holds results (README.md): --resume finishes that run, --overwrite replaces it, another --out keeps it"),
    (["--resume"], "--resume: {out} holds no results.json to continue; run without --resume"),
    (["--resume", "--overwrite"], "give --resume (continue the run in --out) or --overwrite (replace it), not both"),
])
def test_an_out_holding_results_is_refused_unless_told_what_to_do(ready, capsys, flags, message):
    backbones, out = ready
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--quick", "--backbones", str(backbones), "--out", str(out), *flags])
    assert exit_info.value.code == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and message.format(out=out) in errors[0], errors
    assert (out / "README.md").read_text() == "an earlier report" and os.listdir(out) == ["README.md"]


def test_a_damaged_backbone_is_one_line_and_the_earlier_results_stay(ready, capsys):
    backbones, out = ready
    os.remove(os.path.join(ex.backbone_folders(str(backbones))["medium"], "tokenizer.json"))
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--quick", "--backbones", str(backbones), "--out", str(out), "--overwrite"])
    assert exit_info.value.code == 2
    assert errors_of(capsys) == [f"reproduce.py: error: no backbone in {ex.backbone_folders(str(backbones))['medium']}: "
                                 "it needs tokenizer.json and model/ (train_char.py writes them)"]
    assert (out / "README.md").read_text() == "an earlier report"


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(ready, capsys, monkeypatch):
    backbones, out = ready
    os.remove(out / "README.md")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(rx, "run", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        reproduce.main(["--quick", "--backbones", str(backbones), "--out", str(out), "--no-progress"])
    assert exit_info.value.code == 130
    assert f"interrupted: {out}{os.sep}results.json keeps every finished run; --resume continues" in capsys.readouterr().err
