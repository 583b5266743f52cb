"""The paper-reproduction command runs end to end (tiny backbone, --quick) and writes its report."""

import json

import pytest

from minipeft import GPT, GPTConfig
from minipeft.experiments import main, random_slots
from minipeft.layers import bias_slots
from minipeft.tokenizer import CharTokenizer


@pytest.fixture
def backbone(tmp_path):
    tok = CharTokenizer.from_text("".join(chr(c) for c in range(32, 127)) + "\n")
    GPT(GPTConfig(vocab_size=tok.vocab_size, n_positions=256, n_embd=32, n_layer=1, n_head=2)).save_pretrained(tmp_path / "model")
    (tmp_path / "tokenizer.json").write_text(tok.to_json())
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
