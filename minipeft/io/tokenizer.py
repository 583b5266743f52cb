"""Tokenizers that work offline: GPT-2 BPE through tiktoken, a character-level one, T5's SentencePiece."""

import base64
import hashlib
import json
import os
import re
from importlib import resources

import tiktoken
import tiktoken.load

from ..errors import MiniPeftError

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
        """The tokenizer that to_json() wrote; anything else is a MiniPeftError saying what is wrong."""
        expected = 'expected {"chars": "<the alphabet>", "unk": "<one character>"}'
        try:
            d = json.loads(s)
        except (TypeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise MiniPeftError(f"not a character tokenizer: not valid JSON ({e}); {expected}") from None
        if not isinstance(d, dict):
            raise MiniPeftError(f"not a character tokenizer: a JSON {type(d).__name__}; {expected}")
        missing = [k for k in ("chars", "unk") if k not in d]
        if missing:
            raise MiniPeftError(f"not a character tokenizer: it lacks {', '.join(map(repr, missing))}; {expected}")
        if not isinstance(d["chars"], str) or not isinstance(d["unk"], str) or len(d["unk"]) != 1:
            raise MiniPeftError(f"not a character tokenizer: chars {type(d['chars']).__name__}, unk {d['unk']!r}; {expected}")
        return cls(d["chars"], d["unk"])

    @classmethod
    def load(cls, path):
        """The tokenizer in a JSON file (train_char.py's tokenizer.json), or a MiniPeftError naming the file."""
        path = os.fspath(path)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise MiniPeftError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise MiniPeftError(f"{path}: cannot read it ({e})") from None
        try:
            return cls.from_json(text)
        except MiniPeftError as e:
            raise MiniPeftError(f"{path}: {e}") from None


class T5Tokenizer:
    """T5's SentencePiece tokenizer (spiece.model), offline; needs `pip install 'minipeft[t5]'`.

    Ids: pad 0, eos 1 (appended by encode), unk 2, then the pieces; the sentinels <extra_id_k> sit
    above the pieces, counted down from the top: <extra_id_k> = vocab_size - 1 - k (T5: 32,000
    pieces + 100 sentinels, <extra_id_0> = 32099). The model's vocabulary (32128) is larger: padding.
    """

    PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
    SENTINEL = re.compile(r"<extra_id_(\d+)>")

    def __init__(self, path, extra_ids=100):
        try:
            import sentencepiece  # optional: only T5 needs it
        except ImportError:
            raise MiniPeftError("T5Tokenizer needs the sentencepiece package: pip install 'minipeft[t5]'") from None
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "spiece.model")
        if not os.path.isfile(path):
            raise MiniPeftError(f"{path} does not exist; pass T5's spiece.model or the folder holding it")
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=path)
        except (RuntimeError, OSError) as e:
            raise MiniPeftError(f"{path}: not a SentencePiece model ({str(e)[:200]})") from None
        if (self.sp.pad_id(), self.sp.eos_id()) != (self.PAD_ID, self.EOS_ID):
            raise MiniPeftError(f"{path}: pad/eos ids are {self.sp.pad_id()}/{self.sp.eos_id()}; T5 uses 0/1")
        if type(extra_ids) is not int or extra_ids < 0:
            raise MiniPeftError(f"extra_ids must be a non-negative integer, got {extra_ids!r}")
        self.n_pieces, self.extra_ids = self.sp.get_piece_size(), extra_ids

    @property
    def vocab_size(self):
        return self.n_pieces + self.extra_ids

    def sentinel_id(self, k):
        if not 0 <= k < self.extra_ids:
            raise MiniPeftError(f"<extra_id_{k}> does not exist; this tokenizer has {self.extra_ids} sentinels")
        return self.vocab_size - 1 - k

    def encode(self, text, add_eos=True):
        """Token ids of text; <extra_id_k> in the text becomes its sentinel id; eos appended."""
        ids, start = [], 0
        for m in self.SENTINEL.finditer(text):
            ids += self.sp.encode(text[start:m.start()])
            ids.append(self.sentinel_id(int(m.group(1))))
            start = m.end()
        ids += self.sp.encode(text[start:])
        return ids + [self.EOS_ID] if add_eos else ids

    def decode(self, ids, skip_special_tokens=True):
        """Text of ids; sentinels come back as <extra_id_k>, pad and eos are dropped (or spelled out)."""
        out, run = [], []
        for i in (int(i) for i in ids):
            if not 0 <= i < self.vocab_size:
                raise MiniPeftError(f"token id {i} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
            if i in (self.PAD_ID, self.EOS_ID) or i >= self.n_pieces:
                if run:
                    out.append(self.sp.decode(run))
                    run = []
                if i >= self.n_pieces:
                    out.append(f"<extra_id_{self.vocab_size - 1 - i}>")
                elif not skip_special_tokens:
                    out.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            out.append(self.sp.decode(run))
        return " ".join(out)
