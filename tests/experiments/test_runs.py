"""Running the reproductions (minipeft/experiments/runs.py): the settings do what their names say,
a stopped run resumes to the same results, a diverged run is kept and said, and what a run
measures (bias change, saved bytes, inits) is what it says."""

import json
import math
import os

import pytest
import torch

from minipeft import GPT, GPTConfig, MiniPeftError
from minipeft.experiments import findings as fx, runs as rx
from minipeft.methods.bitfit import TERMS, BitFit
from minipeft.models.layers import bias_slots
from minipeft.training import finetune as ft
from tests.experiments_common import CHARS, make_backbones

pytestmark = pytest.mark.usefixtures("one_thread")


def _without_times(results):
    """results with the wall-clock fields removed (the only ones that differ between equal runs)."""
    runs = {name: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rs] for name, rs in results["runs"].items()}
    return {**results, "runs": runs, "seconds": None}


def test_the_settings_do_what_their_names_say(quick_run):
    _, _, results = quick_run
    runs = results["runs"]
    first = {name: rs[0] for name, rs in runs.items()}
    assert first["frozen"]["trainable"] == 0 and first["frozen"]["saved_bytes"] == 0 and first["frozen"]["curve"] == []
    assert first["full"]["trainable"] == first["full"]["total"]
    assert first["bitfit query+mlp_in"]["trainable"] < first["bitfit"]["trainable"]
    assert first["bitfit at full's lr"]["lr"] == first["full"]["lr"] != first["bitfit"]["lr"]
    assert first["prefix lr x10"]["lr"] == pytest.approx(10 * first["prefix"]["lr"])
    assert first["sentiment prompt length 100"]["trainable"] == 100 * first["sentiment prompt length 1"]["trainable"]
    sizes = [first[f"sentiment full {s}"]["total"] for s in fx.SIZES]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    # the saved adapter is a small fraction of the whole model; prefix saves its keys/values, not its MLP
    assert 0 < first["bitfit"]["saved_bytes"] < first["full"]["saved_bytes"] / 10
    assert first["prefix"]["saved_bytes"] < 4 * first["prefix"]["trainable"] / 10
    ensemble = first["sentiment prompt ensemble of 5"]
    assert ensemble["score"] == ensemble["single"] and 0 <= ensemble["voted"] <= 1
    assert set(first["bitfit"]["bias_change"]) == set(TERMS) and "bias_change" not in first["bitfit query+mlp_in"]


def test_a_stopped_run_resumes_to_the_same_results(quick_run, tmp_path, monkeypatch):
    folders, _, straight = quick_run
    real_run, calls = rx.run, []

    def stop_after_three(*args, **kwargs):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(args[0])
        return real_run(*args, **kwargs)

    monkeypatch.setattr(rx, "run", stop_after_three)
    with pytest.raises(KeyboardInterrupt):
        rx.reproduce(folders, str(tmp_path), quick=True, progress=False)
    kept = json.loads((tmp_path / "results.json").read_text())
    assert sum(len(rs) for rs in kept["runs"].values()) == 3 and len(kept["sweep"]) == len(straight["sweep"])
    monkeypatch.setattr(rx, "run", real_run)
    resumed = rx.reproduce(folders, str(tmp_path), quick=True, resume=True, progress=False)
    assert _without_times(json.loads(json.dumps(resumed))) == _without_times(json.loads(json.dumps(straight)))


def test_resume_refuses_results_of_other_settings(quick_run, tmp_path):
    folders, out, _ = quick_run
    (tmp_path / "results.json").write_text((out / "results.json").read_text())
    with pytest.raises(MiniPeftError, match="was written with other settings"):
        rx.reproduce(folders, str(tmp_path), quick=False, resume=True, progress=False)


def test_a_missing_backbone_is_refused_before_anything_runs(tmp_path):
    folders = make_backbones(tmp_path / "backbones")
    os.remove(os.path.join(folders["large"], "tokenizer.json"))
    with pytest.raises(MiniPeftError, match=f"no backbone in {folders['large']}: it needs tokenizer.json and model/"):
        rx.reproduce(folders, str(tmp_path / "out"), quick=True, progress=False)
    assert not (tmp_path / "out").exists()


def test_bias_change_is_the_mean_absolute_change_per_element_of_each_term():
    model = GPT(GPTConfig(vocab_size=CHARS.vocab_size, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    module = BitFit(model)
    roles = {name: role for name, _, _, role in bias_slots(model)}
    want_sum, want_n = dict.fromkeys(TERMS, 0.0), dict.fromkeys(TERMS, 0)
    with torch.no_grad():
        for i, (name, bias) in enumerate(zip(module.slots, module.biases)):
            delta = torch.linspace(-1, 1, bias.numel()) * (i + 1)
            bias += delta
            want_sum[roles[name]] += delta.abs().sum().item()
            want_n[roles[name]] += delta.numel()
    got = rx.bias_change(module)
    assert set(got) == set(TERMS)
    for term in TERMS:
        assert got[term] == pytest.approx(want_sum[term] / want_n[term], rel=1e-5)


def test_random_slots_match_the_paper_subset_size():
    model = GPT(GPTConfig.named("gpt2", n_layer=2))
    paper = sum(getattr(m, a).numel() for _, m, a, role in bias_slots(model) if role in ("query", "mlp_in"))
    chosen = rx.random_slots(model, paper, seed=0)
    size = sum(getattr(m, a).numel() for name, m, a, _ in bias_slots(model) if name in chosen)
    assert 0.8 * paper <= size <= 1.1 * paper
    assert chosen != rx.random_slots(model, paper, seed=1)


def test_real_word_and_class_label_inits_reach_the_methods():
    model = GPT(GPTConfig(vocab_size=CHARS.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2))
    codec = ft.Codec(CHARS, "gpt")
    words = rx.build(fx.SETTINGS["prefix real-word init n=50"], model, codec, 0)
    plain = rx.build(fx.SETTINGS["prefix n=50"], model, codec, 0)
    site = next(iter(model.prefix_sites()))
    assert not torch.allclose(words.flat(site), plain.flat(site))
    labels = rx.build(fx.SETTINGS["sentiment prompt small"], model, codec, 0)
    embedded = model.input_embeddings().weight[codec.encode("positive")].mean(0)
    assert torch.allclose(labels.prompt[0, 0], embedded, atol=1e-6)


def test_a_diverged_run_is_scored_as_it_stands_and_says_so(quick_run, monkeypatch):
    folders, _, results = quick_run
    setting, codec = fx.SETTINGS["prefix direct lr x10"], rx.load_backbone(folders["small"])[1]
    torch.manual_seed(0)
    untrained = rx.build(setting, rx.load_backbone(folders["small"])[0], codec, 0)
    want = rx.score(untrained, "e2e", ft.pairs("e2e", 8, fx.DATA_SEEDS["test"]), codec)

    def diverge(module, *args, **kwargs):
        raise ft.Diverged("non-finite loss (nan) at step 1; lower the learning rate (now 0.03)")
    monkeypatch.setattr(ft, "finetune", diverge)
    out = rx.run(setting, 0, fx.sweep_plan(results), folders, 8)
    assert out["diverged"].startswith("non-finite loss (nan) at step 1") and out["curve"] == []
    assert out["score"] == pytest.approx(want, abs=1e-6)     # the last good state: here, the initial prefix


def test_a_sweep_rate_that_diverges_scores_minus_infinity_from_there_on(quick_run, monkeypatch):
    folders, _, _ = quick_run

    def diverge_after_two(module, train, codec, *, on_step, **kwargs):
        on_step(0, 1.0)
        on_step(1, 1.0)
        raise ft.Diverged("non-finite loss (inf) at step 3")
    monkeypatch.setattr(ft, "finetune", diverge_after_two)
    scores = rx.sweep_one("e2e", "full", 1e-3, folders, (2, 3), 8)
    assert [s for s, _ in scores] == [2, 3] and math.isfinite(scores[0][1]) and scores[1][1] == -math.inf
