"""The paper-reproduction command runs end to end (tiny backbone, --quick) and writes its report;
the fine-tuning helpers it shares with train_char.py (minipeft.training.finetune) measure what they say."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from minipeft import GPT, T5, GPTConfig, MiniPeftError, T5Config
from minipeft import experiments
from minipeft.training import finetune as ft
from minipeft.experiments import main, random_slots
from minipeft.models.layers import bias_slots
from minipeft.models.t5 import shift_right
from minipeft.io.tokenizer import CharTokenizer

CHARS = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")


@pytest.fixture
def backbone(tmp_path):
    GPT(GPTConfig(vocab_size=CHARS.vocab_size, n_positions=256, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "model")
    (tmp_path / "tokenizer.json").write_text(CHARS.to_json())
    return tmp_path


def test_quick_run_writes_tables(backbone, tmp_path, capsys):
    out = tmp_path / "results"
    main(["--backbone", str(backbone), "--quick", "--only", "bitfit,prefix,prompt_ensemble", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"bitfit", "prefix", "prompt_ensemble"}
    md = (out / "results.md").read_text()
    for label in ("BitFit, query + mlp_in", "infix, all layers", "5 prompts, one batch", "majority vote"):
        assert label in md
    assert results["bitfit"][1]["runs"][0]["trainable"] == 0  # frozen


def test_the_default_out_is_not_the_committed_results(backbone, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["--backbone", str(backbone), "--quick", "--only", "prompt_ensemble"])
    out = os.path.join("runs", "experiments")
    assert set(json.loads((tmp_path / out / "results.json").read_text())) == {"prompt_ensemble"}
    assert not (tmp_path / "results").exists()
    assert capsys.readouterr().out.rstrip().endswith(f"results written to {out}{os.sep}: results.md, results.json, loss_curves.png")


def test_an_out_holding_results_is_refused_unless_overwrite(backbone, tmp_path, capsys):
    out = tmp_path / "results"
    main(["--backbone", str(backbone), "--quick", "--only", "bitfit_size", "--out", str(out)])
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    assert sorted(before) == ["loss_curves.png", "results.json", "results.md", "training_size.png"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", str(backbone), "--quick", "--only", "prompt_ensemble", "--out", str(out)])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(
        f"error: --out {out} already holds results (results.json, results.md, loss_curves.png, training_size.png): "
        "write these to another --out, or pass --overwrite to replace them"), errors
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before

    main(["--backbone", str(backbone), "--quick", "--only", "prompt_ensemble", "--out", str(out), "--overwrite"])
    assert (f"--overwrite: removed the earlier results from {out} (results.json, results.md, loss_curves.png, "
            "training_size.png)") in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["loss_curves.png", "results.json", "results.md"]  # no stale training_size.png
    assert set(json.loads((out / "results.json").read_text())) == {"prompt_ensemble"}


def test_a_damaged_backbone_tokenizer_is_one_clear_line(backbone, tmp_path, capsys):
    (backbone / "tokenizer.json").write_text('{"chars": "abc"}')
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", str(backbone), "--quick", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == [f"error: {backbone / 'tokenizer.json'}: not a character tokenizer: it lacks 'unk'; expected "
                      '{"chars": "<the alphabet>", "unk": "<one character>"}'], errors


def test_random_subset_matches_the_paper_subset_size():
    model = GPT(GPTConfig.named("gpt2", n_layer=2))
    paper = sum(getattr(m, a).numel() for _, m, a, role in bias_slots(model) if role in ("query", "mlp_in"))
    chosen = random_slots(model, paper, seed=0)
    size = sum(getattr(m, a).numel() for name, m, a, _ in bias_slots(model) if name in chosen)
    assert 0.8 * paper <= size <= 1.1 * paper


def test_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", str(tmp_path / "none"), "--quick"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["--only", "bitfit,nonsense"], "--only: unknown experiment nonsense; choose from bitfit, bitfit_lr, bitfit_size, prefix,"),
    (["--seeds", "0"], "--seeds must be a positive integer, got 0"),
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--eval-examples", "-1"], "--eval-examples must be a positive integer, got -1"),
])
def test_bad_arguments_are_refused_before_anything_runs(backbone, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--backbone", str(backbone), "--out", str(tmp_path / "results"), *argv])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "results").exists()


def test_plots_are_written_atomically_with_the_prompt_length_of_each_setting(tmp_path, monkeypatch):
    run = {"method": "prompt", "n_train": 10, "curve": [(0, 2.0), (1, 1.5)], "accuracy": 0.5}
    # 96 wide and 5 prompts: trainable // 128 would give 3, 7, 0
    results = {"prompt_length": [{"label": f"prompt length {n}", "options": {"n_prompt": n}, "runs": [{**run, "trainable": n * 96}]}
                                 for n in (5, 10, 1)]}
    (tmp_path / "prompt_length.png").write_bytes(b"an earlier plot")
    plotted = {}
    save_png = experiments._save_png

    def keep_x(fig, path):
        plotted[os.path.basename(path)] = [list(line.get_xdata()) for line in fig.axes[0].lines]
        save_png(fig, path)

    monkeypatch.setattr(experiments, "_save_png", keep_x)
    experiments.plot(results, str(tmp_path))
    assert plotted["prompt_length.png"] == [[5, 10, 1]]
    for name in ("loss_curves.png", "prompt_length.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n"), name
    assert sorted(os.listdir(tmp_path)) == ["loss_curves.png", "prompt_length.png"]  # no temporaries left


def _summed_completion_loss(model, pair, codec):
    """Hand computation: -log p of each completion token (T5: and eos), summed, and their number."""
    tensors = ft.batch([pair], codec, max_len=160)
    if codec.arch == "t5":
        ids, mask, labels = tensors
        logits, targets = model(ids, shift_right(labels), mask)[0], labels[0]
    else:
        ids, mask, labels, _ = tensors
        logits, targets = model(ids, mask)[0, :-1], labels[0, 1:]  # position t predicts token t + 1
    keep = targets != -100
    return F.cross_entropy(logits[keep], targets[keep], reduction="sum").item(), int(keep.sum())


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_evaluate_is_the_mean_over_every_completion_token(arch):
    torch.manual_seed(0)
    codec = ft.Codec(CHARS, arch)
    if arch == "t5":
        model = T5(T5Config(vocab_size=codec.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=4))
    else:
        model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    model.eval()
    # batches of 2: completions of 2 + 7 tokens, then 12 + 1, then 3
    data = [("ab => ", "c\n"), ("a => ", "bcdefg\n"), ("xyz => ", "hello there\n"), ("q => ", "\n"), ("k => ", "hi\n")]
    sums, counts = zip(*(_summed_completion_loss(model, pair, codec) for pair in data))
    assert len(set(counts)) > 1
    want = sum(sums) / sum(counts)
    assert ft.evaluate(model, data, codec, batch_size=2) == pytest.approx(want, rel=1e-5)
    per_example_weighted = (sum(sums[:2]) / sum(counts[:2]) * 2 + sum(sums[2:4]) / sum(counts[2:4]) * 2 + sums[4] / counts[4]) / 5
    assert abs(want - per_example_weighted) > 1e-3  # the earlier weighting, which this test tells apart


def test_evaluate_refuses_data_with_nothing_to_predict():
    codec = ft.Codec(CHARS, "gpt")
    model = GPT(GPTConfig(vocab_size=codec.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2))
    with pytest.raises(MiniPeftError, match="nothing to evaluate"):
        ft.evaluate(model, [("ab => ", "")], codec)
