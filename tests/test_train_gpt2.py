"""train_gpt2.py end to end on a random tiny GPT-2 (--init tiny) and a Hugging Face-layout checkpoint.

The command-line runs (each method, a checkpoint written by transformers, a malformed file) start
together as subprocesses (module fixture `cli`) and are checked by the tests that need them; the
resume, Ctrl-C, NaN and bad-argument checks call main() in this process, which is much faster.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
import torch.utils.checkpoint

from minipeft import GPT, BitFit, PrefixTuning, PromptTuning
from minipeft.io import safetensors
from tests import methods_common
from tests.methods_common import exit_status
from minipeft.training.distributed import Ranks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_gpt2.py")
FAST = ["--steps", "3", "--batch-size", "2", "--max-length", "24", "--n-examples", "20", "--eval-examples", "2",
        "--samples", "1", "--sample-tokens", "4", "--hidden", "16", "--n-prefix", "3", "--n-prompt", "3"]
TINY = ["--init", "tiny", *FAST]
METHODS = {"bitfit": BitFit, "prefix": PrefixTuning, "prompt": PromptTuning, "full": None}
ROWS = [{"prompt": f"Q: what is {a} plus {b}?", "completion": f" A: {a + b}."} for a in range(5) for b in range(4)]

spec = importlib.util.spec_from_file_location("train_gpt2", SCRIPT)
train_gpt2 = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train_gpt2)


class Run:
    """A subprocess of the script, started now, its result collected when first asked for."""

    def __init__(self, *args):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._result = None

    def result(self):
        if self._result is None:
            out, err = self.proc.communicate(timeout=300)
            self._result = subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)
        return self._result


pytestmark = pytest.mark.usefixtures("one_thread")


def main(*argv):
    """train_gpt2.main(argv): the exit status (0 when it returns)."""
    return exit_status(train_gpt2.main, *argv)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def write_hf_gpt2(folder):
    """A tiny GPT-2 saved by transformers itself (the test oracle), GPT-2's vocabulary size."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50257, n_positions=64, n_embd=64, n_layer=1, n_head=1)  # n_head = n_embd // 64: a bare file loads too
    GPT2LMHeadModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every subprocess run, started at once (two cores do them two at a time)."""
    tmp = tmp_path_factory.mktemp("cli")
    runs = {m: Run(*TINY, "--method", m, "--out", str(tmp / m)) for m in METHODS}
    data = write_jsonl(tmp / "sums.jsonl", ROWS)
    (tmp / "bad.jsonl").write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "a", "completion": \n')
    runs["bad-jsonl"] = Run(*TINY, "--data", str(tmp / "bad.jsonl"), "--out", str(tmp / "x"))
    hf = write_hf_gpt2(tmp / "hf-gpt2")
    runs["hf"] = Run("--model", hf, "--method", "bitfit", "--data", data, *FAST, "--out", str(tmp / "hf-run"))
    yield tmp, runs
    for run in runs.values():  # a failed test may leave some running
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.communicate()


def eval_after(stdout):
    return float(re.search(r"eval loss after: ([\d.]+)", stdout).group(1))


def parse(argv):
    parser = train_gpt2.build_parser()
    return train_gpt2.check_args(parser, parser.parse_args(argv))


def held_out_loss(module, argv):
    """The script's own held-out loss for `module`, with the data and settings of argv."""
    args = parse(argv)
    train_gpt2.set_max_length(args, module.model if hasattr(module, "model") else module)
    _, val_set = train_gpt2.build_data(train_gpt2.gpt2_tokenizer(), args, Ranks())
    return train_gpt2.evaluate(module, val_set, args)


# ---- each method, end to end ----------------------------------------------------------------------

@pytest.mark.parametrize("method", list(METHODS))
def test_method_runs_end_to_end_and_its_result_loads_back(cli, method):
    tmp, runs = cli
    r = runs[method].result()
    assert r.returncode == 0, r.stderr
    for line in ("eval loss before:", "sample before:", "eval loss after:", "sample after:", "saved:"):
        assert line in r.stdout, (line, r.stdout)
    assert "Traceback" not in r.stderr and "train " + method in r.stderr  # the progress bar
    out = tmp / method
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 3
    # the end of the output says where each file went
    written = [("fine-tuned model", out / "model")] if METHODS[method] is None else [("adapter", out / "adapter.safetensors"),
                                                                                    ("its base model", out / "base")]
    for what, path in written + [("training state", out / "state.pt")]:
        assert re.search(rf"^  {what} +{re.escape(str(path))}", r.stdout, re.M), (what, r.stdout)
    if METHODS[method] is None:  # full fine-tuning: a whole model in the Hugging Face layout
        module = GPT.from_pretrained(out / "model")
    else:  # an adapter, loaded onto the random base model the run saved beside it
        module = METHODS[method].load(GPT.from_pretrained(out / "base"), out / "adapter.safetensors")
    # the saved result is the trained one: it reproduces the loss the run reported
    assert held_out_loss(module, TINY + ["--method", method]) == pytest.approx(eval_after(r.stdout), abs=1e-4)


def test_hugging_face_checkpoint_and_jsonl(cli):
    tmp, runs = cli
    r = runs["hf"].result()
    assert r.returncode == 0, r.stderr
    assert "18 training / 2 held-out examples" in r.stdout and "Q: what is" in r.stdout
    adapter = BitFit.load(GPT.from_pretrained(tmp / "hf-gpt2"), tmp / "hf-run" / "adapter.safetensors")
    argv = ["--model", str(tmp / "hf-gpt2"), "--method", "bitfit", "--data", str(tmp / "sums.jsonl"), *FAST]
    assert held_out_loss(adapter, argv) == pytest.approx(eval_after(r.stdout), abs=1e-4)


def test_a_bare_safetensors_file_as_model(cli, capsys):
    tmp, _ = cli
    weights = tmp / "hf-gpt2" / "model.safetensors"
    assert main("--model", weights, "--method", "prompt", "--data", tmp / "sums.jsonl", *FAST, "--out", tmp / "file-run") == 0
    assert "eval loss after:" in capsys.readouterr().out
    assert PromptTuning.load(GPT.from_pretrained(weights), tmp / "file-run" / "adapter.safetensors")


def test_malformed_jsonl_gives_one_clear_line_without_traceback(cli):
    r = cli[1]["bad-jsonl"].result()
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "bad.jsonl:2: not valid JSON" in errors[0], r.stderr


# ---- resume, Ctrl-C, NaN, bad arguments: main() in this process ----------------------------------

def state_tensors(out):
    return torch.load(os.path.join(out, "state.pt"), weights_only=True)["module"]


def assert_same_run(a, b):
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    fa, fb = (safetensors.load(os.path.join(o, "adapter.safetensors"))[0] for o in (a, b))
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


@pytest.mark.parametrize("method", ["prefix", "bitfit"])
def test_resume_equals_a_straight_run(tmp_path, capsys, method):
    common = [*TINY, "--method", method, "--steps", "4", "--save-every", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(*common, "--out", straight) == 0
    assert main(*common, "--out", resumed, "--stop-at", "2") == 0
    assert torch.load(resumed / "state.pt", weights_only=True)["step"] == 2
    assert not (resumed / "adapter.safetensors").exists()
    out = capsys.readouterr().out
    assert f"  training state   {resumed / 'state.pt'}" in out
    assert "stopped at step 2 of 4; continue with the same command, --resume in place of --stop-at 2" in out
    assert main(*common, "--out", resumed, "--resume") == 0
    assert torch.load(resumed / "state.pt", weights_only=True)["step"] == 4
    assert_same_run(straight, resumed)


def test_ctrl_c_saves_a_resumable_state(tmp_path, capsys, monkeypatch):
    common = [*TINY, "--method", "prompt", "--steps", "4", "--save-every", "100"]
    assert main(*common, "--out", tmp_path / "straight") == 0

    batch_at = train_gpt2.batch_at

    def press_ctrl_c_at_step_2(train_set, step, args):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, handled by the script's own handler
        return batch_at(train_set, step, args)

    monkeypatch.setattr(train_gpt2, "batch_at", press_ctrl_c_at_step_2)
    assert main(*common, "--out", tmp_path / "resumed") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "state.pt holds step 2; continue with the same arguments plus --resume" in err
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["step"] == 2
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back

    assert main(*common, "--out", tmp_path / "resumed", "--resume") == 0
    assert_same_run(tmp_path / "straight", tmp_path / "resumed")


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path, capsys):
    common = [*TINY, "--method", "bitfit", "--lr", "1e30", "--out", tmp_path]  # one step sends the biases to 1e30
    assert main(*common, "--steps", "1") == 0
    good = (tmp_path / "state.pt").read_bytes()
    capsys.readouterr()
    assert main(*common, "--steps", "4", "--resume") == 2  # the next step's loss is NaN
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(r"error: non-finite loss \(nan\) at step 2; stopped without saving", err)
    assert (tmp_path / "state.pt").read_bytes() == good
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    fresh = tmp_path / "fresh"  # a run that saved nothing yet names no state to resume from
    assert main(*common[:-1], fresh, "--steps", "4") == 2
    err = capsys.readouterr().err
    assert "stopped before this run saved anything. Start again with a lower --lr" in err and "--resume" not in err, err


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.jsonl"], "missing.jsonl: no such file"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--log-every", "0"], "--log-every must be a positive integer"),
    (["--lr", "-1"], "--lr must be a positive number"),
    (["--max-length", "1000"], "exceeds the model's context of 64"),
    (["--method", "bitfit", "--terms", "query,bogus"], "unknown BitFit term"),
    (["--resume"], "no checkpoint in"),
    (["--no-truncate", "--max-length", "8"], "longer than max_length 8"),
    (["--device", "nonsense"], "not a torch device"),
    (["--stop-at", "9"], "--stop-at must be between 1 and --steps"),
    (["--data", ROOT], "is a folder; give the data file itself"),
    (["--resume", "--overwrite"], "give --resume (continue the run in --out) or --overwrite (replace it), not both"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    assert main(*TINY, "--out", tmp_path / "out", *argv) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out" / "state.pt").exists()


def test_checkpointing_flag_turns_it_on_and_trains_the_same(tmp_path, monkeypatch):
    """--checkpointing sets model.checkpointing; the run ends with the same weights as one without it."""
    assert parse([*TINY, "--checkpointing"]).checkpointing and not parse(TINY).checkpointing
    models = []
    load_model = train_gpt2.load_model
    monkeypatch.setattr(train_gpt2, "load_model", lambda args: models.append(load_model(args)) or models[-1])
    checkpointed = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: checkpointed.append(1) or checkpoint(*a, **k))
    common = [*TINY, "--method", "bitfit", "--steps", "2"]
    assert main(*common, "--out", tmp_path / "plain") == 0
    assert not checkpointed
    assert main(*common, "--out", tmp_path / "checkpointed", "--checkpointing") == 0
    assert [model.checkpointing for model, _ in models] == [False, True]
    assert len(checkpointed) == 2 * 2  # 2 steps x 2 blocks (none in evaluation or sampling)
    assert_same_run(tmp_path / "plain", tmp_path / "checkpointed")


def test_compile_flag_trains_through_torch_compile_to_the_same_adapter(tmp_path, monkeypatch):
    """--compile trains through torch.compile(module); the adapter equals an eager run's to 1e-5.
    (backend aot_eager: the same graph inductor gets, without minutes of C++ compilation)"""
    assert parse([*TINY, "--compile"]).compile and not parse(TINY).compile
    compiled = []
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **k: compiled.append(m) or compile(m, backend="aot_eager", fullgraph=True))
    common = [*TINY, "--method", "prefix", "--steps", "2"]
    assert main(*common, "--out", tmp_path / "eager") == 0
    assert not compiled
    assert main(*common, "--out", tmp_path / "compiled", "--compile") == 0
    assert len(compiled) == 1 and isinstance(compiled[0], PrefixTuning)
    eager, got = (safetensors.load(os.path.join(tmp_path / o, "adapter.safetensors"))[0] for o in ("eager", "compiled"))
    assert eager.keys() == got.keys()
    for k in eager:
        torch.testing.assert_close(got[k], eager[k], atol=1e-5, rtol=1e-5)


def files_of(out):
    """{relative path: bytes} of every file under out."""
    return {os.path.relpath(os.path.join(d, f), out): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(out) for f in files}


def test_an_out_holding_a_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(*TINY, "--method", "full", "--out", out) == 0
    before = files_of(out)
    capsys.readouterr()
    assert main(*TINY, "--method", "bitfit", "--steps", "2", "--out", out) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(f"error: --out {out} already holds a run (state.pt, model): continue it with --resume, "
                      "write this run to another --out, or pass --overwrite to replace it"), errors
    assert files_of(out) == before  # nothing written, nothing removed

    assert main(*TINY, "--method", "bitfit", "--steps", "2", "--out", out, "--overwrite") == 0
    assert f"--overwrite: removed the earlier run from {out} (state.pt, model)" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["adapter.safetensors", "base", "state.pt"]  # the full run's model/ went with it
    saved = torch.load(out / "state.pt", weights_only=True)
    assert (saved["step"], saved["args"]["method"]) == (2, "bitfit")


def test_resume_with_another_method_names_both(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(*TINY, "--method", "prefix", "--out", out, "--stop-at", "2") == 0
    before = files_of(out)
    capsys.readouterr()
    assert main(*TINY, "--method", "bitfit", "--out", out, "--resume") == 2
    err = capsys.readouterr().err
    assert (f"error: {out / 'state.pt'} is a --method prefix run, this one asks for --method bitfit: resume it with "
            "--method prefix, or train bitfit in another --out (or replace the run with --overwrite)") in err, err
    assert main(*TINY, "--method", "prefix", "--n-prefix", "4", "--out", out, "--resume") == 2
    err = capsys.readouterr().err
    assert "differ in shape" in err and "it was saved with --n-prefix 3 (this run: 4): pass the saved values to resume it" in err
    assert files_of(out) == before


def test_a_damaged_state_cannot_be_resumed_and_the_message_says_what_to_do(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(*TINY, "--method", "bitfit", "--out", out, "--stop-at", "2") == 0
    (out / "state.pt").write_bytes((out / "state.pt").read_bytes()[:100])
    capsys.readouterr()
    assert main(*TINY, "--method", "bitfit", "--out", out, "--resume") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "state.pt: not a readable training state: the file is damaged" in errors[0], errors
    assert errors[0].endswith("failed finding central directory.); it cannot be resumed: start a new run with --overwrite "
                              "(replacing it) or another --out"), errors


def test_without_a_model_it_says_what_to_pass(tmp_path, capsys):
    assert main(*FAST, "--out", tmp_path / "out") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "pass --model" in errors[0] and "--init tiny" in errors[0]
    assert "huggingface-cli download gpt2 config.json model.safetensors --local-dir gpt2" in errors[0]


def test_model_argument_errors(tmp_path, capsys):
    assert main(*FAST, "--model", tmp_path / "nowhere") == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    assert main(*FAST, "--model", tmp_path / "broken", "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "config.json" in err


def test_help_explains_every_flag():
    parser = train_gpt2.build_parser()
    assert all(a.help for a in parser._actions)
    text = parser.format_help()
    for flag in ("--model", "--init", "--method", "--terms", "--n-prefix", "--no-reparam", "--hidden", "--n-prompt",
                 "--prompt-init", "--data", "--max-length", "--no-truncate", "--steps", "--batch-size", "--lr", "--device", "--checkpointing",
                 "--compile", "--fsdp", "--seed", "--out", "--resume", "--save-every", "--log-every"):
        assert flag in text


# ---- torchrun: several processes ------------------------------------------------------------------

def torchrun(*args, module=None, timeout=300):
    """torchrun of the script (or of a test module) on 2 processes from the repository root."""
    return methods_common.torchrun([*(["-m", module] if module else [SCRIPT]), *args], ROOT, timeout)


def train_losses(stdout):
    return [float(x) for x in re.findall(r"step \d+: train loss ([\d.]+)", stdout)]


@pytest.mark.parametrize("method, sharding, resume_on", [("prefix", [], 1), ("prompt", ["--fsdp", "--checkpointing"], 2)],
                         ids=["ddp-prefix-resumed-on-1", "fsdp-checkpointing-prompt-resumed-on-2"])
def test_torchrun_trains_as_one_process_with_the_same_global_batch_and_resumes(tmp_path, capsys, method, sharding,
                                                                               resume_on):
    """Two processes (gloo), stopped after 2 of 4 steps and resumed (on one process, or on two):
    the same training losses and adapter as one process straight through; rank 0 alone prints and
    writes, state.pt in the one-process format. With DDP the gradient bytes all-reduced per step
    are the adapter's trainable tensors'; with FSDP (prompt tuning, which peft loses under
    sharding; with activation checkpointing too) the shards are gathered to save and sharded again
    to resume."""
    # lr 1e-3 for both: Adam turns rounding differences (the ranks sum in another order) into
    # differences of the update up to lr where a gradient is near 0; prompt tuning's own 0.3 makes them 1e-6
    common = [*TINY, "--method", method, "--steps", "4", "--batch-size", "4", "--log-every", "1", "--lr", "1e-3"]
    assert main(*common, "--out", tmp_path / "one") == 0
    one = capsys.readouterr().out
    first = torchrun(*common, *sharding, "--out", str(tmp_path / "two"), "--stop-at", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (tmp_path / "two" / "adapter.safetensors").exists()
    if resume_on == 1:
        assert main(*common, "--out", tmp_path / "two", "--resume") == 0
        second = capsys.readouterr().out
    else:
        run = torchrun(*common, *sharding, "--out", str(tmp_path / "two"), "--resume")
        assert run.returncode == 0, run.stderr[-3000:]
        second = run.stdout
    assert "training on 2 processes (gloo" in first.stdout and "2 examples each per step, 4 in all" in first.stdout
    assert first.stdout.count("eval loss before") == 1                  # rank 0 alone speaks
    # to 1e-6 of the loss (about 10.8 here, where float32's own step is 1e-6), printed to 6 decimals
    assert train_losses(first.stdout) + train_losses(second) == pytest.approx(train_losses(one), rel=1e-6)
    a, b = (safetensors.load(os.path.join(tmp_path, o, "adapter.safetensors"))[0] for o in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert eval_after(second) == pytest.approx(eval_after(one), abs=1e-4)
    if not sharding:
        adapter = train_gpt2.build_method(*train_gpt2.load_model(parse([*common, "--out", str(tmp_path / "x")])), parse(common))
        trainable = sum(p.numel() * 4 for p in adapter.parameters() if p.requires_grad)
        assert f"gradients all-reduced per step: {trainable:,} bytes" in first.stdout


def test_fsdp_needs_torchrun(tmp_path, capsys):
    assert main(*TINY, "--fsdp", "--out", tmp_path / "out") == 2
    assert "--fsdp shards the model over the processes torchrun starts" in capsys.readouterr().err


def test_torchrun_refuses_a_global_batch_that_does_not_split_over_the_processes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(*TINY, "--batch-size", "3", "--out", tmp_path / "out") == 2
    assert ("--batch-size 3 is the global batch, split over the 2 processes torchrun started: give a multiple of 2"
            in capsys.readouterr().err)


def test_a_rank_that_fails_ends_the_run_with_its_message_and_no_rank_left_waiting(tmp_path):
    run = torchrun(*TINY, "--method", "bitfit", "--steps", "50", "--batch-size", "2", "--out", str(tmp_path / "out"),
                   module="tests.failing_rank", timeout=120)          # (about 10 s when nothing waits)
    assert run.returncode != 0                                           # and it returned: nothing hangs
    assert "[rank 1]: error: rank 1 could not read its batch at step 3" in run.stderr, run.stderr[-3000:]
    # rank 0 stops on its own with "[rank 0]: error: another process of this run stopped", or is
    # stopped by torchrun first; either way without a traceback
    assert "[rank0]: Traceback" not in run.stderr
    assert not (tmp_path / "out" / "adapter.safetensors").exists()
