"""Prompt Tuning on GPT-2: the four initialisations, ensembling in one batch, files."""

import pytest
import torch

from minipeft import GPT, GPTConfig, MiniPeftError, PromptTuning
from minipeft.io.adapter_file import FORMAT_VERSION
from tests.methods_common import snapshot, tiny_gpt, toy_batch, train


def test_random_init_is_uniform_in_half_interval():
    p = PromptTuning(tiny_gpt(), 50).prompt
    assert p.shape == (1, 50, 32) and p.min() >= -0.5 and p.max() <= 0.5 and p.std() > 0.2


def test_vocab_init_samples_frequent_tokens():
    model = tiny_gpt()
    E = model.wte.weight
    counts = torch.zeros(61)
    counts[[4, 9, 20]] = 100  # only these are frequent; the top 5,000 of 61 are all, so restrict by a custom top
    import minipeft.methods.prompt as mp
    old, mp.TOP_VOCAB = mp.TOP_VOCAB, 3
    try:
        p = PromptTuning(model, 6, "vocab", token_counts=counts).prompt[0]
    finally:
        mp.TOP_VOCAB = old
    for row in p:
        assert any(torch.equal(row, E[i]) for i in (4, 9, 20))
    p = PromptTuning(model, 6, "vocab").prompt[0]  # unknown frequencies: the first ids
    assert all(any(torch.equal(row, E[i]) for i in range(61)) for row in p)


def test_class_label_init_is_the_mean_of_label_token_embeddings():
    model = tiny_gpt()
    E = model.wte.weight
    labels = [[5, 6], [11], [7, 8, 9]]
    p = PromptTuning(model, 8, "labels", label_ids=labels).prompt[0]
    for slot, ids in enumerate(labels):
        assert torch.allclose(p[slot], E[ids].mean(0), atol=0, rtol=0)
    assert all(any(torch.equal(row, E[i]) for i in range(61)) for row in p[3:])  # the rest from vocabulary
    with pytest.raises(MiniPeftError, match="needs between 1 and n_prompt=2 labels"):
        PromptTuning(model, 2, "labels", label_ids=labels)


def test_text_init_equals_the_text_as_input():
    model = tiny_gpt()
    adapter = PromptTuning(model, 4, "text", text_ids=[3, 1, 4, 1])
    ids = toy_batch(61, batch=2)
    with torch.no_grad():
        want = model(torch.cat([torch.tensor([[3, 1, 4, 1]] * 2), ids], 1))[:, 4:]
        assert (adapter(ids) - want).abs().max() < 1e-5


def test_only_the_prompt_trains_and_loss_drops():
    model = tiny_gpt()
    before = snapshot(model)
    adapter = PromptTuning(model, 5)
    first, last = train(adapter, toy_batch(61), steps=60, lr=0.3)
    assert last < 0.6 * first
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert [p.shape for p in adapter.trainable_parameters()] == [(1, 5, 32)]


def test_ensemble_in_one_batch_equals_separate_runs():
    adapter = PromptTuning(tiny_gpt(), 4, "vocab", n_ensemble=3)
    ids = toy_batch(61, batch=2)
    with torch.no_grad():
        together = adapter(ids).view(3, 2, ids.shape[1], -1)
        for k in range(3):
            assert (together[k] - adapter.member(k)(ids)).abs().max() < 1e-5


def test_majority_vote():
    adapter = PromptTuning(tiny_gpt(), 4, "vocab", n_ensemble=5)
    ids = toy_batch(61, batch=6)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    labels = [[3], [7], [8]]
    per_prompt, voted = adapter.classify(ids, mask, labels)
    assert per_prompt.shape == (5, 6)
    for k in range(5):  # each member's own prediction, from its own run
        single, _ = adapter.member(k).classify(ids, mask, labels)
        assert torch.equal(single[0], per_prompt[k])
    for b in range(6):
        counts = torch.bincount(per_prompt[:, b], minlength=3)
        assert counts[voted[b]] == counts.max()


def test_save_load_and_file_errors(tmp_path):
    import json
    from minipeft.io import safetensors
    adapter = PromptTuning(tiny_gpt(), 4)
    path = tmp_path / "p.safetensors"
    adapter.save(path)
    again = PromptTuning.load(tiny_gpt(), path)
    assert torch.equal(again.prompt, adapter.prompt)
    tensors, meta = safetensors.load(path)
    safetensors.save(path, tensors, {**meta, "minipeft_format": str(FORMAT_VERSION + 1)})
    with pytest.raises(MiniPeftError, match="newer than this minipeft reads"):
        PromptTuning.load(tiny_gpt(), path)
    safetensors.save(path, {"prompt": torch.zeros(1, 5, 32)}, {**meta})
    with pytest.raises(MiniPeftError, match=r"prompt has shape \[1, 5, 32\]; expected \[1, 4, 32\]"):
        PromptTuning.load(tiny_gpt(), path)
    safetensors.save(path, tensors, {"format": "pt"})
    with pytest.raises(MiniPeftError, match="not a minipeft adapter file"):
        PromptTuning.load(tiny_gpt(), path)
    assert json.loads(meta["config"]) == {"n_prompt": 4, "n_ensemble": 1}
    for n_prompt in (10**8, 2**50):  # ~13 GB, and more than any machine: refused before allocating either
        safetensors.save(path, tensors, {**meta, "config": json.dumps({"n_prompt": n_prompt, "n_ensemble": 1})})
        with pytest.raises(MiniPeftError, match=f"n_prompt={n_prompt} is larger than any dimension of the saved tensors"):
            PromptTuning.load(tiny_gpt(), path)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_bf16_model_trains_and_generates_like_fp32(arch):
    from tests.methods_common import check_bf16_model, tiny_t5
    _, a16 = check_bf16_model(lambda m: PromptTuning(m, 3), tiny_gpt() if arch == "gpt" else tiny_t5())
    assert a16.prompt.dtype == torch.float32 and a16.model_kwargs(1)["prompt"].dtype == torch.bfloat16


def test_class_scores_read_the_last_real_token_with_left_or_right_padding():
    from minipeft.methods.adapter import class_scores
    adapter = PromptTuning(tiny_gpt(), 4, "vocab", n_ensemble=2)
    ids = toy_batch(61, batch=2)
    short = ids[0, :9]
    pad = torch.zeros(7, dtype=torch.long)
    right, left = torch.stack([torch.cat([short, pad]), ids[1]]), torch.stack([torch.cat([pad, short]), ids[1]])
    mask_right, mask_left = torch.ones_like(ids), torch.ones_like(ids)
    mask_right[0, 9:] = 0
    mask_left[0, :7] = 0
    labels = [[3], [7], [8]]
    with torch.no_grad():
        alone = class_scores(adapter, short[None], None, labels)                   # [K * 1, C]
        other = class_scores(adapter, ids[1:], None, labels)
        for batch, mask in ((right, mask_right), (left, mask_left)):
            scores = class_scores(adapter, batch, mask, labels).view(2, 2, 3)      # [K, B, C]
            assert (scores[:, 0] - alone).abs().max() < 1e-5
            assert (scores[:, 1] - other).abs().max() < 1e-5
            per_prompt, _ = adapter.classify(batch, mask, labels)
            assert torch.equal(per_prompt[:, 0], alone.argmax(-1))


def test_token_ids_as_tensors_or_lists():
    model = tiny_gpt()
    as_list = PromptTuning(model, 5, "text", text_ids=[3, 1, 4]).prompt
    assert torch.equal(PromptTuning(model, 5, "text", text_ids=torch.tensor([3, 1, 4])).prompt, as_list)
    labels = PromptTuning(model, 4, "labels", label_ids=[[5, 6], [11, 12]], seed=1).prompt
    assert torch.equal(PromptTuning(model, 4, "labels", label_ids=torch.tensor([[5, 6], [11, 12]]), seed=1).prompt, labels)
    one_token = PromptTuning(model, 4, "labels", label_ids=torch.tensor([5, 11]), seed=1).prompt  # C one-token labels
    assert torch.equal(one_token, PromptTuning(model, 4, "labels", label_ids=[[5], [11]], seed=1).prompt)
    for bad, message in [(torch.tensor([3.0, 1.0]), "must be token ids.*got torch.float32 tensor of shape \\[2\\]"),
                         (torch.tensor([[3, 1]]), "must be token ids.*got torch.int64 tensor of shape \\[1, 2\\]"),
                         ("hello", "must be token ids"), ([3, 61], r"ids outside the vocabulary \[0, 61\): \[3, 61\]"),
                         (torch.tensor([], dtype=torch.long), "text_ids is empty")]:
        with pytest.raises(MiniPeftError, match=message):
            PromptTuning(model, 4, "text", text_ids=bad)
    with pytest.raises(MiniPeftError, match=r"label_ids\[1\] has ids outside the vocabulary"):
        PromptTuning(model, 4, "labels", label_ids=[[5], [-1]])


def test_member_index_is_checked():
    adapter = PromptTuning(tiny_gpt(), 4, "vocab", n_ensemble=3)
    assert torch.equal(adapter.member(2).prompt, adapter.prompt[2:3])
    for k in (-1, 3, 1.0):
        with pytest.raises(MiniPeftError, match=rf"member k must be an int in \[0, 3\).*got {k!r}"):
            adapter.member(k)


# ---- one prompt for every row of a GPT-2 batch: run once, handed over as a prefix ----------------

SHARED = dict(vocab_size=97, n_positions=48, n_embd=32, n_layer=3, n_head=4)


def _shared_prompt_pair(dropout=0.0):
    """A prompt adapter and the plain formulation of the same prompt (cat([prompt, wte(ids)], 1) per row)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHARED, dropout=dropout)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
    adapter = PromptTuning(model, 5, seed=4)
    plain = lambda ids, **kw: model(ids, prompt=adapter.prompt.expand(ids.shape[0], -1, -1), **kw)  # noqa: E731
    return model, adapter, plain


@pytest.mark.parametrize("case", ["plain", "padding", "left padding and labels", "left padding, plain positions", "with prefix",
                                  "prefix value per row", "labels", "dropout in eval"])
def test_shared_prompt_run_once_equals_the_prompt_in_every_row(case):
    """PromptTuning runs a prompt shared by the rows once and hands its keys/values over as a prefix
    (or, where that does not apply, prepends it per row): outputs and gradients equal the prompt
    prepended to every row ([B, P, C], the model's plain path)."""
    model, adapter, plain = _shared_prompt_pair(dropout=0.1 if case == "dropout in eval" else 0.0)
    torch.manual_seed(3)
    ids = torch.randint(0, SHARED["vocab_size"], (3, 7))
    kw = {}
    if case == "padding":  # right padding and a gap: the run-once path
        kw["attention_mask"] = torch.tensor([[1] * 7, [1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 0]])
    if case == "left padding and labels":  # the per-row path (a leading pad's position follows the prompt)
        kw["attention_mask"] = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [0] * 6 + [1]])
        kw["labels"] = ids.masked_fill(kw["attention_mask"] == 0, -100)
    if case == "left padding, plain positions":  # the run-once path: every slot keeps its index
        kw["attention_mask"] = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1], [0] * 6 + [1]])
        kw["labels"] = ids.masked_fill(kw["attention_mask"] == 0, -100)
        kw["positions"] = "plain"
        kw["prefix"] = [(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)) for _ in range(SHARED["n_layer"])]
    if case == "with prefix":
        kw["prefix"] = [(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)) for _ in range(SHARED["n_layer"])]
    if case == "prefix value per row":  # the per-row path: the prompt's states differ per row
        kw["prefix"] = [(torch.randn(1, 4, 2, 8), torch.randn(3, 4, 2, 8)) for _ in range(SHARED["n_layer"])]
    if case == "labels":
        kw["labels"] = ids
    real = kw.get("attention_mask", torch.ones_like(ids))[..., None]  # padding positions' outputs mean nothing
    outs, grads = [], []
    for call in (adapter, plain):
        adapter.prompt.grad = None
        out = call(ids, **kw)
        loss = "labels" in kw
        value = out if loss else (out * real * torch.linspace(-1, 1, out.shape[-1])).sum()
        value.backward()
        outs.append(out.detach() if loss else out.detach() * real)
        grads.append(adapter.prompt.grad.clone())
    assert (outs[0] - outs[1]).abs().max() < 1e-5
    assert (grads[0] - grads[1]).abs().max() < 1e-5 * max(1.0, grads[1].abs().max().item())
    assert grads[0].abs().max() > 0


def test_shared_prompt_takes_the_run_once_path():
    """The shared path runs the blocks once on the P prompt slots and once on the T tokens: the rows
    never carry the prompt (a [3, 7] batch never reaches a block as [3, 12, C]); left padding with
    the default positions, and a model called with the prompt itself, take the per-row path."""
    model, adapter, plain = _shared_prompt_pair()
    seen = []
    hook = model.h[0].register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    ids = torch.randint(0, SHARED["vocab_size"], (3, 7))
    left_padded = torch.ones(3, 7, dtype=torch.long)
    left_padded[1, :3] = 0
    with torch.no_grad():
        adapter(ids)
        plain(ids)
        adapter(ids, left_padded)  # positions="real"
        adapter(ids, left_padded, positions="plain")
    hook.remove()
    once, per_row = [(1, 5, SHARED["n_embd"]), (3, 7, SHARED["n_embd"])], [(3, 12, SHARED["n_embd"])]
    assert seen == once + per_row + per_row + once


def test_shared_prompt_path_checks_its_arguments_first():
    _, adapter, _ = _shared_prompt_pair()
    ids = torch.randint(0, SHARED["vocab_size"], (3, 7))
    with pytest.raises(MiniPeftError, match="attention_mask must have the shape of its ids"):
        adapter(ids, [[1] * 7] * 3)
    with pytest.raises(MiniPeftError, match="prefix must hold one"):
        adapter(ids, prefix=[(torch.zeros(1, 4, 2, 8),) * 2])
    with pytest.raises(MiniPeftError, match="token ids must be in"):
        adapter(ids + 100)


def test_shared_prompt_with_bias_deltas_equals_the_prompt_in_every_row():
    """Bias deltas move the prompt's own states too: an adapter call with them equals the prompt
    prepended to every row, and a malformed one is refused as the model refuses it."""
    model, adapter, plain = _shared_prompt_pair()
    ids = torch.randint(0, SHARED["vocab_size"], (3, 7))
    delta = {"h.0.attn.c_attn.bias_value": torch.randn(SHARED["n_embd"]), "h.1.mlp.c_fc.bias": torch.randn(4 * SHARED["n_embd"])}
    with torch.no_grad():
        assert (adapter(ids, bias_delta=delta) - plain(ids, bias_delta=delta)).abs().max() < 1e-5
    for bad in ([torch.zeros(SHARED["n_embd"])], {"h.0.mlp.c_proj.bias": [0.0] * SHARED["n_embd"]}):
        with pytest.raises(MiniPeftError, match="bias_delta"):
            adapter(ids, bias_delta=bad)
