"""train_char.py end to end (tiny settings, subprocesses) and the built-in corpus."""

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from minipeft import GPT, MiniPeftError
from minipeft.io import safetensors
from minipeft.training.corpus import default_corpus
from minipeft.training.textdata import read_text as load_text
from minipeft.io.tokenizer import CharTokenizer
from minipeft.training.state import read_training_state
from tests.methods_common import exit_status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_char.py")
TINY = ["--batch-size", "4", "--block-size", "32", "--eval-batches", "2", "--sample-length", "30", "--method", "none"]
FINETUNE = ["--method", "all", "--ft-steps", "2", "--ft-examples", "8"]
TEXT = ("Return the number of items in the container. If the argument is a sequence, the length is counted "
        "from the start.\nRaise ValueError when the value is not found; use a default to avoid it.\n\n") * 40


# one thread per run: these runs are tiny, and two OpenMP threads spinning on a busy 2-core machine are much slower
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120)


def load_script():
    spec = importlib.util.spec_from_file_location("train_char", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_weights(out):
    return safetensors.load(os.path.join(out, "model", "model.safetensors"))[0]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return str(path)


def test_trains_on_a_text_file_and_writes_a_loadable_checkpoint(tmp_path, text_file):
    out = tmp_path / "run"
    r = run("--data", text_file, "--steps", "5", "--eval-every", "5", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    assert "step 5: train loss" in r.stdout and "val loss" in r.stdout
    assert "---- sample" in r.stdout
    for name in ("model/config.json", "model/model.safetensors", "tokenizer.json", "train_state.pt"):
        assert (out / name).is_file(), name
    model = GPT.from_pretrained(out / "model")
    tokenizer = CharTokenizer.from_json((out / "tokenizer.json").read_text())
    assert model.config.vocab_size == tokenizer.vocab_size == len(set(TEXT)) + 1
    assert (model.config.n_layer, model.config.n_head, model.config.n_embd, model.config.n_positions) == (4, 4, 128, 256)
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 5 and state["tokenizer"] == tokenizer.to_json()
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]  # atomic writes left no temporaries


def test_default_corpus_run(tmp_path):
    out = tmp_path / "run"
    r = run("--steps", "2", "--eval-every", "2", "--out", str(out), *TINY)
    assert r.returncode == 0, r.stderr
    assert (out / "model" / "model.safetensors").is_file()
    assert GPT.from_pretrained(out / "model").config.vocab_size == 97  # printable ASCII + newline + unknown


def test_resume_gives_the_weights_of_a_straight_run(tmp_path, text_file, capsys):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    common = ["--data", text_file, "--steps", "6", "--eval-every", "3", *TINY]
    procs = [subprocess.Popen([sys.executable, SCRIPT, *common, "--out", straight], cwd=ROOT, env=ENV, stderr=subprocess.PIPE, text=True),
             subprocess.Popen([sys.executable, SCRIPT, *common, "--out", resumed, "--stop-at", "3"], cwd=ROOT, env=ENV,
                              stderr=subprocess.PIPE, text=True)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    halfway = load_weights(resumed)
    assert torch.load(os.path.join(resumed, "train_state.pt"), weights_only=True)["step"] == 3

    # weights from another step next to this state (a save cut short) are refused, not mixed
    mixed = tmp_path / "mixed"
    shutil.copytree(resumed, mixed)
    shutil.copy(os.path.join(straight, "model", "model.safetensors"), mixed / "model" / "model.safetensors")
    with pytest.raises(SystemExit) as exit:
        load_script().main([*common, "--out", str(mixed), "--resume"])
    assert exit.value.code == 2 and "are from different steps" in capsys.readouterr().err

    r = run(*common, "--out", resumed, "--resume")
    assert r.returncode == 0, r.stderr
    assert torch.load(os.path.join(resumed, "train_state.pt"), weights_only=True)["step"] == 6
    want, got = load_weights(straight), load_weights(resumed)
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert not all(torch.equal(halfway[k], got[k]) for k in want)  # it did train after resuming


@pytest.mark.usefixtures("one_thread")
def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path, text_file, capsys, monkeypatch):
    script = load_script()

    def main(*argv):
        return exit_status(script.main, *argv)

    common = ["--data", text_file, "--steps", "4", "--eval-every", "100", *TINY]  # no evaluation before the last step
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(*common, "--out", straight) == 0

    step_generator = script.step_generator

    def press_ctrl_c_at_step_2(seed, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, handled by the script's own handler
        return step_generator(seed, step)

    monkeypatch.setattr(script, "step_generator", press_ctrl_c_at_step_2)
    assert main(*common, "--out", resumed) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "train_state.pt holds step 2; continue with the same arguments plus --resume" in err
    assert torch.load(resumed / "train_state.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back

    assert main(*common, "--out", resumed, "--resume") == 0
    want, got = load_weights(straight), load_weights(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(script, "compare", interrupted)  # Ctrl-C while fine-tuning, after pretraining
    assert main(*common, "--method", "bitfit", "--out", resumed) == 130
    err = capsys.readouterr().err
    assert "interrupted after pretraining" in err and "reuses it" in err and "--resume" not in err


def bad_argument_cases(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 100)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "short.txt").write_text("just a few words\n")
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--data", str(tmp_path / "missing.txt")], "no such file"),
        (["--data", str(tmp_path)], "is a folder; give the data file itself"),
        (["--resume", "--retrain"], "give --resume (continue the checkpoint in --out) or --retrain (replace it), not both"),
        (["--steps", "0"], "--steps must be a positive integer"),
        (["--steps", "-3"], "--steps must be a positive integer"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--block-size", "1000"], "exceeds the model's context"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--stop-at", "900", "--steps", "10"], "--stop-at must be between 1 and --steps"),
        (["--resume", "--out", str(tmp_path / "nothing")], "no checkpoint"),
        (["--out", str(tmp_path / "a_file")], "is a file"),
        (["--device", "nonsense"], "not a torch device"),
        (["--data", str(tmp_path / "latin1.txt")], "not UTF-8"),
        (["--data", str(tmp_path / "empty.txt")], "empty"),
        (["--data", str(tmp_path / "short.txt")], "too short"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    return cases


def test_bad_arguments_give_one_clear_line(tmp_path, capsys):
    main = load_script().main
    for args, message in bad_argument_cases(tmp_path):
        with pytest.raises(SystemExit) as exit:  # any other exception would be a traceback
            main([*args, "--out", str(tmp_path / "out")] if "--out" not in args else args)
        err = capsys.readouterr().err
        assert exit.value.code == 2, (args, err)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], (args, err)
    assert not (tmp_path / "out").exists()  # nothing was written


@pytest.mark.parametrize("which", ["missing.txt", "latin1.txt"])  # one refused by argparse, one while loading
def test_bad_arguments_end_to_end_without_traceback(tmp_path, which):
    bad_argument_cases(tmp_path)
    r = run("--data", str(tmp_path / which), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("train_char.py: error: ")


def test_help_explains_every_flag():
    parser = load_script().build_parser()
    text = parser.format_help()
    for flag in ("--data", "--steps", "--batch-size", "--block-size", "--lr", "--eval-every", "--device", "--seed",
                 "--out", "--resume", "--sample-length", "--compile"):
        assert flag in text
    assert all(a.help for a in parser._actions)


@pytest.mark.usefixtures("one_thread")
def test_compile_flag_pretrains_and_fine_tunes_through_torch_compile(tmp_path, text_file, monkeypatch):
    """--compile: the pretraining model and each method on each task train through torch.compile;
    the weights and adapters equal an eager run's to 1e-5 (backend aot_eager: inductor's graph,
    without minutes of C++ compilation)."""
    compiled = []
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(type(m).__name__) or compile(m, backend="aot_eager"))
    argv = ["--data", text_file, "--steps", "2", "--eval-every", "2", *TINY, "--sample-length", "0",
            "--method", "bitfit", "--ft-steps", "2", "--ft-examples", "8"]
    assert exit_status(load_script().main, *argv, "--out", tmp_path / "eager") == 0
    assert not compiled
    assert exit_status(load_script().main, *argv, "--out", tmp_path / "compiled", "--compile") == 0
    assert compiled == ["GPT", "BitFit", "BitFit"]  # pretraining, then BitFit on each task
    paths = ["model/model.safetensors", "adapters/e2e/bitfit.safetensors", "adapters/sentiment/bitfit.safetensors"]
    for path in paths:
        eager, got = (safetensors.load(tmp_path / run / path)[0] for run in ("eager", "compiled"))
        assert eager.keys() == got.keys()
        for k in eager:
            torch.testing.assert_close(got[k], eager[k], atol=1e-5, rtol=1e-5, msg=f"{path}: {k}")


def test_default_corpus_is_english_text_and_deterministic():
    text = default_corpus()
    assert len(text) > 500_000
    assert set(text) <= {chr(c) for c in range(32, 127)} | {"\n"}
    assert sum(c.isalpha() for c in text) / len(text) > 0.6
    assert "Return" in text and " the " in text
    prefix = default_corpus(max_chars=100_000)  # a smaller cap gives a prefix of the same text ...
    assert prefix == text[:100_000] + "\n"
    assert default_corpus(max_chars=100_000) == prefix  # ... every time


def test_load_text_errors(tmp_path):
    with pytest.raises(MiniPeftError, match="no such file"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(MiniPeftError, match="not a file"):
        load_text(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(MiniPeftError, match="empty"):
        load_text(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"ok \xff\xfe")
    with pytest.raises(MiniPeftError, match="not UTF-8"):
        load_text(tmp_path / "bin.txt")
    (tmp_path / "good.txt").write_text("h\u00e9llo\n", encoding="utf-8")
    assert load_text(tmp_path / "good.txt") == "h\u00e9llo\n"


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_fine_tunes_every_method_and_prints_one_table(tmp_path, text_file, arch):
    out = tmp_path / "run"
    r = run("--data", text_file, "--steps", "2", "--eval-every", "2", "--out", str(out), "--arch", arch, *TINY, *FINETUNE)
    assert r.returncode == 0, r.stderr
    table = r.stdout[r.stdout.index("| method |"):]
    for method in ("full", "frozen", "bitfit", "prefix", "prompt"):
        assert f"| {method} |" in table
        assert f"{method:7s} after:" in r.stdout
    assert "before:" in r.stdout
    assert (f"adapters saved in {out / 'adapters' / 'e2e'}{os.sep} and {out / 'adapters' / 'sentiment'}{os.sep}: "
            "full/ (the whole model), bitfit.safetensors, prefix.safetensors, prompt.safetensors") in r.stdout
    for task in ("e2e", "sentiment"):  # one adapter per task
        for name in ("bitfit.safetensors", "prefix.safetensors", "prompt.safetensors", "full/model.safetensors"):
            assert (out / "adapters" / task / name).is_file(), (task, name)
    assert "| E2E BLEU |" in table and "the classes\n  are balanced" in table  # the columns are explained
    assert (out / "loss_curves.png").read_bytes().startswith(b"\x89PNG") and f"loss curves: {out / 'loss_curves.png'}" in r.stdout
    again = run("--data", text_file, "--steps", "2", "--out", str(out), "--arch", arch, *TINY)  # a finished checkpoint is reused
    assert again.returncode == 0 and "reusing the pretrained model" in again.stdout
    if arch == "gpt":  # fine-tuning again into the same --out says which earlier adapters it replaces
        again = run("--data", text_file, "--steps", "2", "--out", str(out), *TINY, *FINETUNE[2:], "--method", "bitfit,frozen")
        assert again.returncode == 0, again.stderr
        assert (f"{out / 'adapters'}{os.sep} holds an earlier run's {os.path.join('e2e', 'bitfit.safetensors')}, "
                f"{os.path.join('sentiment', 'bitfit.safetensors')}: this run replaces them") in again.stdout


# ---- what is already in --out: reused, refused or replaced, never lost unasked ---------------------

FAST = ["--eval-every", "2", *TINY, "--sample-length", "0"]


def checkpoint_files(out):
    """{relative path: bytes} of every file under out."""
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(out) for f in files}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step checkpoint and its arguments (copy it before changing it)."""
    tmp = tmp_path_factory.mktemp("finished")
    (tmp / "text.txt").write_text(TEXT, encoding="utf-8")
    argv = ["--data", str(tmp / "text.txt"), "--steps", "2", *FAST]
    assert exit_status(load_script().main, *argv, "--out", tmp / "run") == 0
    return tmp / "run", argv


def copy_of(finished, tmp_path):
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def refusal(argv, capsys):
    """The one error line of a run that must be refused (status 2)."""
    capsys.readouterr()
    assert exit_status(load_script().main, *argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize("damage, named, problem", [
    (lambda out: (out / "model" / "model.safetensors").write_bytes(b"\0" * 100), "model/model.safetensors",
     " is not the file train_state.pt was saved with: the weights are damaged, or they and the state are from different steps"),
    (lambda out: (out / "train_state.pt").write_bytes(b"not a torch file"), "train_state.pt",
     ": not a readable training state: the file is damaged"),
    (lambda out: (out / "train_state.pt").unlink(), "train_state.pt", " is missing: "),
    (lambda out: (out / "tokenizer.json").write_text('{"chars": "abc"}'), "tokenizer.json",
     ": not a character tokenizer: it lacks 'unk'"),
    (lambda out: (out / "tokenizer.json").write_text('{"chars": "ab'), "tokenizer.json",
     ": not a character tokenizer: not valid JSON"),
], ids=["weights", "state", "no-state", "tokenizer-key", "tokenizer-json"])
@pytest.mark.usefixtures("one_thread")
def test_a_damaged_checkpoint_is_named_and_kept(finished, tmp_path, capsys, damage, named, problem):
    out = copy_of(finished, tmp_path)
    damage(out)
    before = checkpoint_files(out)
    error = refusal([*finished[1], "--out", out], capsys)
    assert f"error: {out / named}{problem}" in error, error
    assert error.endswith(". Nothing was changed: --retrain pretrains 2 steps again and replaces it; another --out keeps it")
    assert checkpoint_files(out) == before


@pytest.mark.usefixtures("one_thread")
def test_the_training_state_is_the_one_format_holding_the_weights_of_model(finished):
    state = read_training_state(finished[0] / "train_state.pt")  # as train_gpt2.py's state.pt is read
    weights = GPT.from_pretrained(finished[0] / "model").state_dict()
    assert state["module"].keys() == weights.keys() and all(torch.equal(state["module"][k], weights[k]) for k in weights)
    assert (state["step"], state["args"]["steps"]) == (2, 2)


@pytest.mark.usefixtures("one_thread")
def test_a_state_of_the_earlier_format_is_reused_and_resumed(finished, tmp_path, capsys):
    """train_char.py once wrote train_state.pt without the model's tensors (they were in model/ only,
    which the state's hash ties to it): such a checkpoint is still reused and resumed."""
    out = copy_of(finished, tmp_path)
    state = torch.load(out / "train_state.pt", weights_only=True)
    del state["module"]
    torch.save(state, out / "train_state.pt")
    before = checkpoint_files(out)
    assert exit_status(load_script().main, *finished[1], "--out", out) == 0
    assert "reusing the pretrained model" in capsys.readouterr().out
    assert checkpoint_files(out) == before
    straight = copy_of(finished, tmp_path / "straight")
    more = list(finished[1])
    more[more.index("--steps") + 1] = "3"  # one step more than the checkpoint holds
    for folder in (out, straight):
        assert exit_status(load_script().main, *more, "--out", folder, "--resume") == 0
    assert load_weights(out).keys() == load_weights(straight).keys()
    assert all(torch.equal(load_weights(out)[k], load_weights(straight)[k]) for k in load_weights(out))


@pytest.mark.usefixtures("one_thread")
def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    argv = ["--data", text_file, *FAST, "--eval-every", "1", "--lr", "1e30", "--out", out]  # one step sends the weights to 1e30
    assert exit_status(load_script().main, *argv, "--steps", "1") == 0
    good = checkpoint_files(out)
    capsys.readouterr()
    assert exit_status(load_script().main, *argv, "--steps", "4", "--resume") == 2  # the next step's loss is NaN
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(r"error: non-finite loss \(nan\) at step 2; stopped without saving: "
                                                rf"{re.escape(str(out / 'train_state.pt'))} keeps the last good save", err), err
    assert checkpoint_files(out) == good


@pytest.mark.usefixtures("one_thread")
def test_a_finished_checkpoint_of_other_steps_is_refused_with_the_ways_on(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = checkpoint_files(out)
    argv = [*finished[1], "--out", out]
    keep = "--retrain pretrains {} steps again and replaces it; another --out keeps it"
    assert refusal([*argv, "--steps", "3"], capsys).endswith(
        f"error: {out} holds a finished checkpoint of 2 steps, fewer than --steps 3: --resume continues it to 3 (its "
        "learning-rate schedule was planned for 2), --steps 2 reuses it; " + keep.format(3))
    assert refusal([*argv, "--steps", "1"], capsys).endswith(
        f"error: {out} holds a finished checkpoint of 2 steps, more than --steps 1: --steps 2 reuses it; " + keep.format(1))
    assert refusal([*argv, "--arch", "t5"], capsys).endswith(
        f"error: {out} holds a checkpoint of --arch gpt, this run asks for --arch t5: pass --arch gpt to use it; " + keep.format(2))
    assert refusal([*argv, "--arch", "t5", "--resume"], capsys).endswith(
        f"error: {out / 'train_state.pt'} is a checkpoint of --arch gpt, this run asks for --arch t5: pass --arch gpt to resume it")
    assert checkpoint_files(out) == before
    assert exit_status(load_script().main, *argv, "--steps", "3", "--resume") == 0  # the way it named
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 3


def test_a_checkpoint_of_another_size_or_text_is_refused_with_the_ways_on(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = checkpoint_files(out)
    argv = [*finished[1], "--out", out]
    keep = "--retrain pretrains 2 steps again and replaces it; another --out keeps it"
    text = f"--data {finished[1][1]}"
    assert refusal([*argv, "--size", "small"], capsys).endswith(
        f"error: {out} holds a model pretrained on {text} at --size medium, this run asks for {text} at --size small: "
        "pass the checkpoint's --size / --corpus / --data to use it; " + keep)
    no_data = [a for a in argv if a not in finished[1][:2]]  # the built-in mixture instead of the file
    assert refusal(no_data, capsys).endswith(
        f"error: {out} holds a model pretrained on {text} at --size medium, this run asks for --corpus mixture at --size "
        "medium: pass the checkpoint's --size / --corpus / --data to use it; " + keep)
    assert refusal([*argv, "--size", "small", "--resume"], capsys).endswith(
        f"error: {out / 'train_state.pt'} is a checkpoint of --size medium, this run asks for --size small: pass --size "
        "medium to resume it")
    assert checkpoint_files(out) == before


@pytest.mark.usefixtures("one_thread")
def test_a_stopped_checkpoint_says_how_to_continue_and_is_not_restarted(tmp_path, text_file, capsys):
    out = tmp_path / "run"
    argv = ["--data", text_file, "--steps", "4", *FAST, "--out", out]
    assert exit_status(load_script().main, *argv, "--stop-at", "2") == 0
    printed = capsys.readouterr().out
    for what, path in (("model", out / "model"), ("tokenizer", out / "tokenizer.json"), ("training state", out / "train_state.pt")):
        assert f"\n  {what:16s} {path}" in printed, printed
    assert printed.rstrip().endswith("stopped at step 2 of 4; continue with the same command, --resume in place of --stop-at 2")
    before = checkpoint_files(out)
    assert refusal(argv, capsys).endswith(
        f"error: {out} holds a checkpoint stopped at step 2 of 4: --resume continues it to --steps 4; --retrain pretrains "
        "4 steps again and replaces it; another --out keeps it")
    assert checkpoint_files(out) == before


@pytest.mark.usefixtures("one_thread")
def test_retrain_replaces_a_damaged_checkpoint_and_says_so(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / "model" / "model.safetensors").write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert exit_status(load_script().main, *finished[1], "--out", out, "--retrain") == 0
    assert f"--retrain: pretraining from scratch; the checkpoint in {out} is replaced at the first save" in capsys.readouterr().out
    assert load_weights(out).keys() == load_weights(finished[0]).keys()
    assert load_script().read_checkpoint(out)["step"] == 2  # whole again: the weights match the state's hash


@pytest.mark.usefixtures("one_thread")
def test_the_same_finished_checkpoint_is_reused_and_other_arguments_are_named(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    before = checkpoint_files(out)
    capsys.readouterr()
    assert exit_status(load_script().main, *finished[1], "--out", out, "--lr", "0.01") == 0
    assert (f"reusing the pretrained model in {out} (finished at step 2; it was pretrained with other --lr than this "
            "run's; --retrain to train it again)") in capsys.readouterr().out
    assert checkpoint_files(out) == before


def test_t5_resume_looks_in_the_t5_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    error = refusal(["--arch", "t5", "--resume"], capsys)
    assert error.endswith(f"--resume: no checkpoint in runs/char-t5 (expected {os.path.join('runs', 'char-t5', 'train_state.pt')})")
