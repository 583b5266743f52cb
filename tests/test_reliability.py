"""Files from elsewhere: fuzzed safetensors, configs and adapters raise only MiniPeftError;
a save killed at any moment leaves the previous file intact."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from minipeft import GPT, GPTConfig, MiniPeftError, PromptTuning
from minipeft.io import safetensors

CFG = GPTConfig(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)


def _valid_file(tmp_path):
    path = tmp_path / "valid.safetensors"
    safetensors.save(path, {"a": torch.randn(3, 4), "b": torch.arange(6, dtype=torch.int32), "c": torch.ones(2, dtype=torch.bfloat16)},
                     metadata={"k": "v"})
    return path.read_bytes()


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def _mutate(data, ops):
    data = bytearray(data)
    for op, at, arg in ops:
        at = at % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= arg
        elif op == "truncate":
            data = data[:at]
        elif op == "insert":
            data[at:at] = bytes([arg])
        elif op == "delete":
            del data[at:at + arg]
    return bytes(data)


@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_fuzzed_safetensors_raise_only_minipeft_errors(tmp_path_factory, ops):
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / "m.safetensors"
    path.write_bytes(_mutate(_valid_file(folder), ops))
    try:
        tensors, _ = safetensors.load(path)
    except MiniPeftError:
        return
    for t in tensors.values():  # what loads is well-formed
        assert t.numel() * t.element_size() <= path.stat().st_size


def _load_with_edited_config(model_class, folder, edits):
    """Load a saved model after editing its config.json: it loads, or raises a MiniPeftError."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(edits)
    (folder / "config.json").write_text(json.dumps(cfg))
    try:
        model_class.from_pretrained(folder)
    except MiniPeftError:
        pass


json_value = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True) | st.text(max_size=5),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=5)


@given(edits=st.dictionaries(st.sampled_from(["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner",
                                              "layer_norm_epsilon", "resid_pdrop", "activation_function", "model_type",
                                              "tie_word_embeddings", "scale_attn_weights"]), json_value, min_size=1, max_size=3))
def test_fuzzed_configs_raise_only_minipeft_errors(tmp_path_factory, edits):
    folder = tmp_path_factory.mktemp("cfg")
    GPT(CFG).save_pretrained(folder)
    _load_with_edited_config(GPT, folder, edits)


@given(edits=st.dictionaries(st.sampled_from(["vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers",
                                              "num_heads", "relative_attention_num_buckets", "relative_attention_max_distance",
                                              "feed_forward_proj", "dropout_rate", "layer_norm_epsilon", "tie_word_embeddings",
                                              "scale_decoder_outputs", "model_type", "decoder_start_token_id"]),
                             json_value, min_size=1, max_size=3))
def test_fuzzed_t5_configs_raise_only_minipeft_errors(tmp_path_factory, edits):
    from minipeft import T5, T5Config
    folder = tmp_path_factory.mktemp("t5cfg")
    T5(T5Config.named("tiny", num_layers=1, d_model=16, d_ff=16, d_kv=4, num_heads=2, vocab_size=20)).save_pretrained(folder)
    _load_with_edited_config(T5, folder, edits)


@pytest.mark.parametrize("arch, edits", [
    ("gpt", {"n_layer": 10**9}), ("gpt", {"vocab_size": 2**33}), ("gpt", {"n_positions": 2**37}), ("gpt", {"n_inner": 2**36}),
    ("gpt", {"n_embd": 2**20, "n_head": 1}),
    ("t5", {"num_layers": 10**9}), ("t5", {"num_decoder_layers": 2**40}), ("t5", {"d_ff": 2**36}), ("t5", {"vocab_size": 2**34}),
    ("t5", {"num_heads": 2**30}),
])
def test_huge_configs_are_refused_before_allocating(tmp_path, arch, edits):
    """A config.json asking for sizes its weights do not have is refused before the model is built:
    no time and no memory go into a billion layers or a 2**33-token vocabulary (this once ran the
    fuzz test out of memory)."""
    from minipeft import T5, T5Config
    import resource
    if arch == "gpt":
        model_class, model = GPT, GPT(CFG)
    else:
        model_class, model = T5, T5(T5Config.named("tiny", num_layers=1, d_model=16, d_ff=16, d_kv=4, num_heads=2, vocab_size=20))
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **edits}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(MiniPeftError, match="config says|expected|shape"):
        model_class.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB: nothing near those sizes


@given(ops=st.lists(mutation, min_size=1, max_size=3), meta_edit=st.sampled_from(["none", "config", "base", "method", "format"]),
       value=json_value)
def test_fuzzed_adapter_files_raise_only_minipeft_errors(tmp_path_factory, ops, meta_edit, value):
    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = GPT(CFG)
    path = folder / "a.safetensors"
    PromptTuning(model, 3).save(path)
    if meta_edit != "none":
        tensors, meta = safetensors.load(path)
        key = {"config": "config", "base": "base", "method": "method", "format": "minipeft_format"}[meta_edit]
        meta[key] = json.dumps(value)
        safetensors.save(path, tensors, meta)
    else:
        path.write_bytes(_mutate(path.read_bytes(), ops))
    try:
        PromptTuning.load(model, path)
    except MiniPeftError:
        pass


CHILD = """
import sys, torch
from minipeft.io import safetensors
path = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    i += 1
    safetensors.save(path, {"version": torch.tensor([i]), "payload": torch.full((1_000_000,), float(i))})
"""


def test_killed_saves_never_destroy_the_previous_file(tmp_path):
    path = tmp_path / "adapter.safetensors"
    safetensors.save(path, {"version": torch.tensor([0]), "payload": torch.zeros(1_000_000)})
    for attempt in range(12):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE)
        child.stdout.readline()
        time.sleep(0.02 + 0.037 * attempt)  # kill at different moments of a save
        child.send_signal(signal.SIGKILL)
        child.wait()
        tensors, _ = safetensors.load(path)  # loadable, and a complete version
        assert torch.equal(tensors["payload"], torch.full((1_000_000,), float(tensors["version"].item())))
    leftovers = [f for f in os.listdir(tmp_path) if f != "adapter.safetensors"]
    assert all(f.endswith(".tmp") for f in leftovers)  # only the killed writers' temporaries


UTF8_CHILD = """
import sys
from minipeft.io.atomic import atomic_write
with atomic_write(sys.argv[1], "w") as f:
    f.write("0.512 \\u00b1 0.003\\n")  # an escape: under the C locale this source must be ASCII
"""


def test_atomic_text_writes_are_utf8_whatever_the_locale(tmp_path):
    """results.md holds "±": under a C (ASCII) locale, text mode without an encoding would fail to write it."""
    path = tmp_path / "results.md"
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    r = subprocess.run([sys.executable, "-c", UTF8_CHILD, str(path)], capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=60)
    assert r.returncode == 0, r.stderr
    assert path.read_bytes() == "0.512 ± 0.003\n".encode("utf-8")
