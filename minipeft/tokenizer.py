"""Tokenizers that work offline: GPT-2 BPE through tiktoken, and a character-level one."""

import base64
import hashlib
import json
import os
from importlib import resources

import tiktoken
import tiktoken.load

from .errors import MiniPeftError

# GPT-2's pre-tokenizer split (tiktoken's r50k pattern, equivalent to the original GPT-2 regex)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
ENDOFTEXT = "<|endoftext|>"
EOT_ID = 50256


def gpt2_tokenizer(folder=None):
    """The GPT-2 tokenizer as a tiktoken.Encoding, built without any download.

    With `folder`, its vocab.json + merges.txt (Hugging Face) or encoder.json + vocab.bpe (OpenAI)
    are used; otherwise the ranks shipped inside minipeft (from openai-whisper, MIT), hash-checked.
    """
    eot = EOT_ID
    if folder is None:
        raw = resources.files("minipeft").joinpath("data/gpt2.tiktoken").read_bytes()
        if hashlib.sha256(raw).hexdigest() != GPT2_RANKS_SHA256:
            raise MiniPeftError("minipeft/data/gpt2.tiktoken is damaged (sha256 mismatch); reinstall minipeft")
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}
    else:
        ranks, eot = _ranks_from_folder(os.fspath(folder))
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: eot}, explicit_n_vocab=max(len(ranks), eot) + 1)


def _ranks_from_folder(folder):
    """(mergeable ranks, id of <|endoftext|>) from a folder's BPE files."""
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        v, m = os.path.join(folder, vocab), os.path.join(folder, merges)
        if os.path.isfile(v) and os.path.isfile(m):
            try:
                with open(v, encoding="utf-8") as f:
                    eot = json.load(f).get(ENDOFTEXT)
                ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=m, encoder_json_file=v)
            except Exception as e:
                raise MiniPeftError(f"{folder}: cannot build the GPT-2 BPE from {vocab} + {merges}: {e}") from None
            return ranks, len(ranks) if eot is None else eot
    raise MiniPeftError(f"{folder}: no tokenizer files; expected vocab.json + merges.txt or encoder.json + vocab.bpe")


class CharTokenizer:
    """One id per character of a fixed alphabet; unknown characters map to `unk` (id 0 by default)."""

    def __init__(self, chars, unk="\ufffd"):
        chars = sorted(set(chars) | {unk})
        self.chars, self.unk = chars, unk
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text):
        return cls(set(text))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text):
        unk = self.stoi[self.unk]
        return [self.stoi.get(c, unk) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)

    def to_json(self):
        return json.dumps({"chars": "".join(self.chars), "unk": self.unk})

    @classmethod
    def from_json(cls, s):
        d = json.loads(s)
        return cls(d["chars"], d["unk"])
