"""Offline GPT-2 tokenizer: known ids, and the same tokenizer built from a model folder's files."""

import json

import pytest

from minipeft import MiniPeftError
from minipeft.io.tokenizer import CharTokenizer, gpt2_tokenizer


def test_known_ids():
    enc = gpt2_tokenizer()
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    with pytest.raises(ValueError):  # tiktoken refuses special tokens in plain text unless allowed
        enc.encode("<|endoftext|>")
    text = "minipeft's tokenizer: naïve café, 12345 ¥ \n\n  spaces"
    assert enc.decode(enc.encode(text)) == text


def _bytes_to_unicode():
    """GPT-2's printable stand-ins for the 256 byte values (as in its encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _write_hf_files(folder, ranks):
    """vocab.json + merges.txt as a Hugging Face GPT-2 folder has them, derived from tiktoken ranks."""
    b2u = _bytes_to_unicode()
    show = lambda token: "".join(b2u[b] for b in token)  # noqa: E731

    def bpe(token, max_rank):  # the merge that produced `token`: BPE with only lower-ranked merges
        parts = [bytes([b]) for b in token]
        while True:
            best = min(((ranks[a + b], i) for i, (a, b) in enumerate(zip(parts, parts[1:])) if ranks.get(a + b, max_rank) < max_rank), default=None)
            if best is None:
                return parts
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]

    merges = [bpe(tok, r) for tok, r in sorted(ranks.items(), key=lambda x: x[1]) if len(tok) > 1]
    vocab = {show(tok): r for tok, r in ranks.items()}
    vocab["<|endoftext|>"] = len(ranks)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{show(a)} {show(b)}\n" for a, b in merges), encoding="utf-8")


def test_built_from_folder_files_equals_shipped(tmp_path):
    shipped = gpt2_tokenizer()
    _write_hf_files(tmp_path, shipped._mergeable_ranks)
    from_folder = gpt2_tokenizer(tmp_path)
    for text in ["Hello world", "The Eagle is an Italian restaurant by the riverside.", "  x = f(y) # ünïcödé\n\t!"]:
        assert from_folder.encode(text) == shipped.encode(text)
    assert from_folder.eot_token == 50256


def test_folder_without_tokenizer_files(tmp_path):
    with pytest.raises(MiniPeftError, match="vocab.json \\+ merges.txt"):
        gpt2_tokenizer(tmp_path)


def test_char_tokenizer_round_trip_and_unknowns():
    tok = CharTokenizer.from_text("hello world")
    assert tok.decode(tok.encode("hello")) == "hello"
    assert tok.decode(tok.encode("hex")) == "he\ufffd"  # x is unknown
    again = CharTokenizer.from_json(tok.to_json())
    assert again.chars == tok.chars and again.vocab_size == len(set("hello world")) + 1


@pytest.mark.parametrize("text, message", [
    ('{"chars": "abc"', "not valid JSON"),
    ('{"chars": "abc"}', "it lacks 'unk'"),
    ('["abc"]', "a JSON list"),
    ('{"chars": ["a", "b"], "unk": "?"}', "chars list"),
    ('{"chars": "abc", "unk": "??"}', "unk '\\?\\?'"),
])
def test_a_damaged_char_tokenizer_file_is_named(tmp_path, text, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(text)
    with pytest.raises(MiniPeftError, match=f"{path}: not a character tokenizer: .*{message}.*; expected "
                                            '{"chars": "<the alphabet>", "unk": "<one character>"}'):
        CharTokenizer.load(path)
    with pytest.raises(MiniPeftError, match="no such file"):
        CharTokenizer.load(tmp_path / "missing.json")


def test_char_tokenizer_loads_what_it_saved(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    (tmp_path / "tokenizer.json").write_text(tok.to_json())
    assert CharTokenizer.load(tmp_path / "tokenizer.json").chars == tok.chars
