"""The benchmark (bench/bench.py) runs end to end at tiny sizes and reports every row.

No timing assertions: targets and PASS/MISS live in the benchmark's own output.
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

import transformers  # noqa: E402,F401  the reference, installed by the dev extra
import peft  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench", "bench.py")

PREFIX, PROMPT = "prefix (P=10, MLP 512)", "prompt (P=20)"
ROWS = (  # the "what" cell of every row, in order
    [f"train step, {m}" for m in ("full FT", "BitFit", PREFIX, PROMPT)]
    + [f"train step, {m} vs own full FT" for m in ("BitFit", PREFIX, PROMPT)]
    + [f"peak memory, {m} vs own full FT" for m in ("BitFit", PREFIX, PROMPT)]
    + [f"peak memory, {m}" for m in ("BitFit", PREFIX, PROMPT)]
    + ["greedy generation, no prefix", "greedy generation, prefix P=10",
       "greedy generation, no prefix vs bandwidth bound", "greedy generation, prefix P=10 vs bandwidth bound"]
    + [f"8 tasks in one batch, {m}, {what} vs 8 one at a time" for m in ("BitFit", "prefix (P=10, baked)", PROMPT)
       for what in ("8-token forward", "8 + 4 tokens generated")]
    + ["T5 train step, prompt (P=20)"]
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, BENCH, "--size", "tiny", "--steps", "2", "--warmup", "1", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_table_has_every_row(tiny_run):
    stdout, _ = tiny_run
    lines = stdout.splitlines()
    assert any(line.startswith("Machine: ") and "torch" in line and "threads" in line for line in lines)
    assert "| what | minipeft | reference | ratio | target | result |" in lines
    start = lines.index("| what | minipeft | reference | ratio | target | result |") + 2
    body = lines[start:lines.index("", start)]
    assert [line.split(" | ")[0].removeprefix("| ") for line in body] == ROWS
    for line in body:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 6 and cells[5] in ("PASS", "MISS"), line


def test_time_ratios_are_medians_of_paired_rounds(tiny_run):
    _, results = tiny_run
    rows = {row["what"]: row for row in results["rows"]}
    full = results["train"]["full"]
    want = statistics.median(a / b for a, b in zip(full["minipeft_samples_ms"], full["reference_samples_ms"]))
    assert rows["train step, full FT"]["ratio"] == pytest.approx(want)
    bitfit = results["train"]["bitfit"]
    want = statistics.median(a / b for a, b in zip(bitfit["minipeft_samples_ms"], full["minipeft_samples_ms"]))
    assert rows["train step, BitFit vs own full FT"]["ratio"] == pytest.approx(want)
    g = results["generation"]["plain"]
    want = statistics.median(b / a for a, b in zip(g["minipeft_samples_s"], g["reference_samples_s"]))
    assert rows["greedy generation, no prefix"]["ratio"] == pytest.approx(want)


def test_shared_kernel_floor_table(tiny_run):
    """Each training step's share of time in matrix products and attention kernels, and the floor it sets on the ratio."""
    stdout, results = tiny_run
    lines = stdout.splitlines()
    start = lines.index("| step | minipeft: products + attention | reference: products + attention | lowest possible ratio |") + 2
    body = lines[start:start + 5]
    assert [line.split(" | ")[0].removeprefix("| ") for line in body] == ROWS[:4] + ROWS[-1:]
    for t in [*results["train"].values(), results["t5"]]:
        for side in ("minipeft", "reference"):
            assert 0 < t[f"matmul_share_{side}"] < 1 and 0 < t[f"attention_share_{side}"] < 1
            assert t[f"matmul_share_{side}"] + t[f"attention_share_{side}"] < 1
    floor = float(body[0].rstrip(" |").rsplit("|", 1)[1])
    full = results["train"]["full"]
    shares = full["matmul_share_minipeft"] + full["attention_share_minipeft"]
    assert floor == pytest.approx(shares * full["minipeft_ms"] / full["reference_ms"], abs=0.006)


def test_json_has_the_expected_keys(tiny_run):
    _, results = tiny_run
    assert set(results) == {"machine", "config", "rows", "train", "memory", "generation", "bank", "t5"}
    assert {"cpu", "cores", "threads", "torch", "transformers", "peft", "dtype"} <= set(results["machine"])
    assert results["config"]["size"] == "tiny" and results["config"]["steps"] == 2
    assert set(results["train"]) == {"full", "bitfit", "prefix", "prompt"}
    for t in results["train"].values():
        assert {"minipeft_ms", "reference_ms", "trainable_minipeft", "trainable_reference"} <= set(t)
        assert len(t["minipeft_samples_ms"]) == len(t["reference_samples_ms"]) == 2
    for method, m in results["memory"].items():
        assert set(m) == {"minipeft", "reference"}
        assert all(m[impl]["peak_mb"] > 0 for impl in m), method
    assert {"param_bytes", "copy_bandwidth_gb_s", "bound_tokens_per_s", "plain", "prefix"} <= set(results["generation"])
    for case in ("plain", "prefix"):
        g = results["generation"][case]
        assert g["new_tokens_minipeft"] == g["new_tokens_reference"] == 8  # eos never stops the reference early
        rounds = zip(g["minipeft_samples_s"], g["copy_bandwidth_rounds_gb_s"], strict=True)  # one copy per timed round
        want = statistics.median(8 / t / (bw * 1e9 / results["generation"]["param_bytes"]) for t, bw in rounds)
        assert len(g["minipeft_samples_s"]) == 2 and g["fraction_of_bound"] == pytest.approx(want)
    assert len(results["generation"]["copy_bandwidth_samples_gb_s"]) == 9 + 2 * 2 + 9  # before, each timed round, after
    assert [(b["method"], b["kind"]) for b in results["bank"]] == [
        (m, kind) for m in ("bitfit", "prefix", "prompt") for kind in ("forward", "generate")]
    assert all(b["rows"] == 8 and b["speedup"] > 0 for b in results["bank"])
    assert {"minipeft_ms", "reference_ms"} <= set(results["t5"])
    assert [row["what"] for row in results["rows"]] == ROWS
    for row in results["rows"]:
        assert set(row) == {"what", "minipeft", "reference", "unit", "ratio", "target", "pass"}


def test_both_sides_compute_the_same_thing(tiny_run):
    """Same weights and same adapter start: first-step losses agree, and so do trainable sizes.

    Not GPT-2 prompt tuning: peft also scores the first real token from the last virtual token
    (its labels are [-100] * P + ids), one target more than minipeft's loss over input_ids."""
    _, results = tiny_run
    for method, t in results["train"].items():
        if method != "prompt":
            assert abs(t["first_loss_minipeft"] - t["first_loss_reference"]) < 1e-4, method
        if method in ("full", "bitfit"):
            assert t["trainable_minipeft"] == t["trainable_reference"], method
    t5 = results["t5"]
    assert abs(t5["first_loss_minipeft"] - t5["first_loss_reference"]) < 1e-4


# ---- part 6, activation checkpointing: only on request (--only checkpointing) ---------------------------

@pytest.fixture(scope="module")
def checkpointing_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-checkpointing") / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, BENCH, "--size", "tiny", "--only", "checkpointing", "--checkpointing-model", "3x64",
                           "--steps", "1", "--warmup", "1", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_checkpointing_part_reports_memory_and_time_with_and_without(checkpointing_run):
    stdout, results = checkpointing_run
    shape = "GPT 3x64, 2 x 64 positions"
    want = ([f"peak memory, {m}, checkpointing vs without ({shape})" for m in ("BitFit", PREFIX, PROMPT)]
            + [f"train step, {m}, checkpointing vs without ({shape})" for m in ("BitFit", PREFIX, PROMPT)])
    assert [row["what"] for row in results["rows"]] == want
    assert set(results) == {"machine", "config", "rows", "checkpointing"}  # the default parts did not run
    ck = results["checkpointing"]
    assert (ck["model"], ck["n_head"], ck["batch"], ck["positions"]) == ("3x64", 1, 2, 64)
    for method in ("bitfit", "prefix", "prompt"):
        c = ck[method]
        for side in ("without", "with"):
            assert c[side]["peak_mb"] > c[side]["above_model_mb"] > 0 and len(c[side]["step_s"]) == 2  # warm-up + 1
            assert c[side]["step_ms"] == pytest.approx(1000 * c[side]["step_s"][1])
        assert c["peak_ratio"] == pytest.approx(c["with"]["peak_mb"] / c["without"]["peak_mb"])
        assert c["step_ratio"] == pytest.approx(c["with"]["step_ms"] / c["without"]["step_ms"])
    lines = stdout.splitlines()
    header = "| method | peak without | peak with | ratio | above the model: without | with | ratio | step without | step with | ratio |"
    start = lines.index(header) + 2
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[start:start + 3]] == ["BitFit", PREFIX, PROMPT]


def test_compile_adds_compiled_training_rows(tmp_path):
    """--compile: each method's training step also through torch.compile, against the same eager
    reference and against minipeft's own eager step (backend aot_eager: no C++ build in the tests)."""
    out = tmp_path / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, BENCH, "--size", "tiny", "--only", "train", "--compile", "--compile-backend",
                           "aot_eager", "--steps", "2", "--warmup", "0", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    methods = ("full FT", "BitFit", PREFIX, PROMPT)
    compiled = [what for m in methods for what in (f"train step, {m}, compiled", f"train step, {m}, compiled vs own eager")]
    assert [row["what"] for row in results["rows"]] == ROWS[:4] + compiled + ROWS[4:7]
    assert results["config"]["compile"] == "aot_eager"
    for m in ("full", "bitfit", "prefix", "prompt"):
        t = results["train"][m]
        assert t["compiled_ms"] > 0 and t["compiled_to_eager"] > 0 and t["compiled_paired_ratio"] > 0


def test_checkpointing_model_must_be_layers_x_width(capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for bad, message in (("6by384", "takes LxC"), ("2x200", "n_embd")):
        with pytest.raises(SystemExit) as exit:
            bench.main(["--size", "tiny", "--only", "checkpointing", "--checkpointing-model", bad])
        assert exit.value.code == 2 and message in capsys.readouterr().err
