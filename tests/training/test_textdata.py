"""minipeft.training.textdata: reading .txt/.jsonl training data, the loss mask, <|endoftext|>, truncation, errors."""

import json

import pytest
import torch

from minipeft import MiniPeftError
from minipeft.training.textdata import (Example, collate, load_examples, pair_examples, read_jsonl, read_text, split, text_examples,
                           truncate_pair)
from minipeft.io.tokenizer import EOT_ID, gpt2_tokenizer


@pytest.fixture(scope="module")
def enc():
    return gpt2_tokenizer()


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# ---- errors, with line numbers ---------------------------------------------------------------------

@pytest.mark.parametrize("line, message", [
    ('{"prompt": "a", "completion": ', r"data.jsonl:3: not valid JSON"),
    ('["a", "b"]', r"data.jsonl:3: expected an object .* got list"),
    ('{"prompt": "a"}', r'data.jsonl:3: missing "completion"'),
    ('{"completion": "a"}', r'data.jsonl:3: missing "prompt"'),
    ('{"prompt": 5, "completion": "a"}', r'data.jsonl:3: "prompt" must be a string, got int'),
    ('{"prompt": "a", "completion": null}', r'data.jsonl:3: "completion" must be a string, got NoneType'),
])
def test_malformed_jsonl_names_the_line(tmp_path, enc, line, message):
    good = '{"prompt": "x", "completion": " y"}'
    path = write_jsonl(tmp_path / "data.jsonl", [good, "", line, good])  # line 2 is blank: skipped, still counted
    with pytest.raises(MiniPeftError, match=message):
        load_examples(path, enc, 32)


def test_file_errors(tmp_path, enc):
    with pytest.raises(MiniPeftError, match="no such file"):
        load_examples(tmp_path / "missing.jsonl", enc, 32)
    with pytest.raises(MiniPeftError, match="no such file"):
        read_text(tmp_path / "missing.txt")
    with pytest.raises(MiniPeftError, match="not a file"):
        read_text(tmp_path)
    (tmp_path / "empty.txt").write_text(" \n\n")
    with pytest.raises(MiniPeftError, match="empty"):
        load_examples(tmp_path / "empty.txt", enc, 32)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MiniPeftError, match="empty"):
        read_jsonl(tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    with pytest.raises(MiniPeftError, match=r"latin1.jsonl:2: not UTF-8"):
        read_jsonl(tmp_path / "latin1.jsonl")
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(MiniPeftError, match="unknown data format '.csv'"):
        load_examples(tmp_path / "data.csv", enc, 32)


def test_nothing_to_predict_is_refused(enc):
    with pytest.raises(MiniPeftError, match="example 2: nothing to predict"):
        pair_examples(enc, [("a", " b"), ("a", "")], 32, add_eot=False)
    assert pair_examples(enc, [("a", "")], 32)[0].completion == [EOT_ID]  # with eot: learn to stop at once


def test_bom_is_dropped(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completion": "b"}\n')
    assert read_jsonl(tmp_path / "bom.jsonl") == [("a", "b", 1)]


# ---- the loss mask ---------------------------------------------------------------------------------

def test_labels_mask_exactly_the_prompt(tmp_path, enc):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "The capital of France is", "completion": " Paris.", "id": 7}])
    (e,) = load_examples(path, enc, 64)
    prompt, completion = enc.encode("The capital of France is"), enc.encode(" Paris.")
    assert list(e.ids) == prompt + completion + [EOT_ID] and e.n_prompt == len(prompt)
    assert e.labels() == [-100] * len(prompt) + completion + [EOT_ID]
    assert e.n_targets() == len(completion) + 1


def test_collate_pads_on_the_right_with_no_loss(enc):
    a, b = Example((1, 2, 3, 4, 5), 2), Example((6, 7, 8), 1)
    ids, labels = collate([a, b])
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, EOT_ID, EOT_ID]]
    assert labels.tolist() == [[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]]


def test_text_is_chunked_with_loss_everywhere(tmp_path, enc):
    text = "one two three four five six seven eight nine ten eleven"
    (tmp_path / "t.txt").write_text(text)
    examples = load_examples(tmp_path / "t.txt", enc, 4)
    ids = enc.encode(text)
    assert [list(e.ids) for e in examples] == [ids[i:i + 4] for i in range(0, len(ids), 4) if len(ids[i:i + 4]) >= 2]
    assert all(e.n_prompt == 0 and e.labels() == list(e.ids) for e in examples)
    with pytest.raises(MiniPeftError, match="too short"):
        text_examples(enc, "a", 8)


# ---- <|endoftext|> in user text ---------------------------------------------------------------------

def test_endoftext_in_user_text_is_plain_text(tmp_path, enc):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a<|endoftext|>b", "completion": " c <|endoftext|>"}])
    (e,) = load_examples(path, enc, 64)
    assert list(e.ids).count(EOT_ID) == 1 and e.ids[-1] == EOT_ID  # only the appended one
    assert enc.decode(list(e.ids[:-1])) == "a<|endoftext|>b c <|endoftext|>"
    (tmp_path / "t.txt").write_text("x <|endoftext|> y")
    assert EOT_ID not in load_examples(tmp_path / "t.txt", enc, 64)[0].ids


# ---- truncation -------------------------------------------------------------------------------------

def test_truncation_rule():
    p, c = list(range(100, 110)), list(range(200, 204))
    assert truncate_pair(p, c, 14) == (p, c)                                  # fits: unchanged
    assert truncate_pair(p, c, 8) == (p[-4:], c)                              # short completion kept whole
    assert truncate_pair(p[:2], list(range(200, 220)), 8) == (p[:2], list(range(200, 206)))  # short prompt kept whole
    assert truncate_pair(p, list(range(200, 220)), 8) == (p[-4:], list(range(200, 204)))     # both long: half each
    assert truncate_pair(p, list(range(200, 220)), 7) == (p[-3:], list(range(200, 204)))


def test_long_examples_warn_once_or_are_refused(enc):
    long = ("word " * 50, " answer " * 50)
    pairs = [("short", " one"), long, long]
    messages = []
    examples = pair_examples(enc, pairs, 16, warn=messages.append)
    assert len(messages) == 1 and "2 of 3 examples are longer than 16 tokens" in messages[0] and "example 2" in messages[0]
    assert all(len(e.ids) <= 16 for e in examples) and len(examples[0].ids) < 16
    assert examples[1].n_prompt == 8 and examples[1].ids[-1] != EOT_ID    # the completion lost its end, eot included
    with pytest.raises(MiniPeftError, match="2 of 3 examples are longer than max_length 16"):
        pair_examples(enc, pairs, 16, truncate=False)
    with pytest.warns(UserWarning, match="truncated"):
        pair_examples(enc, pairs, 16)


# ---- split ------------------------------------------------------------------------------------------

def test_split_is_fixed_and_disjoint():
    examples = [Example((i, i + 1), 0) for i in range(50)]
    train, val = split(examples, 0.1, seed=0)
    assert len(val) == 5 and len(train) == 45 and set(train).isdisjoint(val)
    assert split(examples, 0.1, seed=0) == (train, val)
    assert split(examples[:2])[1] and split(examples[:2])[0]
    with pytest.raises(MiniPeftError, match="need at least 2"):
        split(examples[:1])
    assert isinstance(collate(val)[0], torch.Tensor)


def test_a_folder_is_named_as_a_folder(tmp_path, enc):
    (tmp_path / "data.jsonl").mkdir()
    for path in (tmp_path, tmp_path / "data.jsonl"):  # without an extension, and with a data extension
        with pytest.raises(MiniPeftError, match=f"{path}: a folder, not a file; give a .txt or .jsonl file"):
            load_examples(path, enc, 32)
    with pytest.raises(MiniPeftError, match=f"{tmp_path}: a folder, not a file"):
        read_text(tmp_path)
