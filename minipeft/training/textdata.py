"""Training data from the user's files, tokenized for a causal language model with a loss mask.

Two formats, chosen by the file's extension:

  .txt     plain UTF-8 text. The whole file is tokenized and cut into chunks of max_length tokens
           (the last, shorter chunk is kept if it has 2 tokens or more); the loss is on every token.
  .jsonl   one JSON object per line, {"prompt": "...", "completion": "..."} (other keys are
           ignored, blank lines skipped). The loss is on the completion only: its labels are -100
           over the prompt's tokens. Prompt and completion are tokenized separately and
           concatenated, so the boundary is exact (the completion's first token never merges with
           the prompt's last); put the separating space at the start of the completion, as GPT-2
           expects: {"prompt": "The capital of France is", "completion": " Paris."}.
           The real <|endoftext|> id is appended to every completion (add_eot=True), so the model
           learns where to stop and generation can end there.

<|endoftext|> written inside user text is ordinary text, deliberately: it is encoded with
tiktoken's encode_ordinary (allowed_special=set(), disallowed_special=()), so it becomes its
plain-text BPE pieces ("<", "|", "end", ...) and never the special id 50256. A file cannot
smuggle in a document boundary; the only <|endoftext|> ids are the ones add_eot appends.

Examples longer than max_length (prompt + completion tokens, the appended eot included):
with truncate=True they are cut and one warning counts them; with truncate=False they are refused.
The cut keeps the end of the prompt (nearest the completion) and the start of the completion:
  the prompt keeps    p = min(len(prompt), max(max_length // 2, max_length - len(completion)))
  the completion keeps min(len(completion), max_length - p)
so a short prompt or a short completion is kept whole, and two long ones share the budget half
and half. The prompt is cut from the left, the completion from the right.

Every error is a MiniPeftError naming the file and, for JSONL, the line: a missing, empty or
non-UTF-8 file, a line that is not JSON or not an object, a missing "prompt"/"completion" key or
a value that is not a string, and an example that leaves nothing to predict.
"""

import json
import os
import random
import warnings
from dataclasses import dataclass

import torch

from ..errors import MiniPeftError
from ..checks import IGNORE  # label of a position with no loss (-100: transformers' convention, and GPT.forward's)
from ..io.tokenizer import EOT_ID

FORMATS = (".txt", ".jsonl")


@dataclass(frozen=True)
class Example:
    """One training sequence: the token ids, and how many leading tokens get no loss."""
    ids: tuple       # prompt + completion token ids
    n_prompt: int    # the first n_prompt tokens are context only (label -100)
    where: str = ""  # where it came from ("data.jsonl:12"), for messages

    @property
    def prompt(self):
        return list(self.ids[:self.n_prompt])

    @property
    def completion(self):
        return list(self.ids[self.n_prompt:])

    def labels(self):
        return [IGNORE] * self.n_prompt + list(self.ids[self.n_prompt:])

    def n_targets(self):
        """Tokens that get a loss: completion tokens with a token before them (labels shift by one)."""
        return len(self.ids) - max(self.n_prompt, 1)


# ---- reading files ---------------------------------------------------------------------------------

def read_text(path):
    """The contents of a UTF-8 file (a leading BOM dropped), or a MiniPeftError saying why not."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise MiniPeftError(f"{path}: no such file")
    if os.path.isdir(path):
        raise MiniPeftError(f"{path}: a folder, not a file; give the text file itself")
    if not os.path.isfile(path):
        raise MiniPeftError(f"{path}: not a file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise MiniPeftError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise MiniPeftError(f"{path}:{line}: not UTF-8 text (byte {e.start} cannot be decoded); convert the file to UTF-8") from None
    if not text.strip():
        raise MiniPeftError(f"{path}: the file is empty")
    return text


def read_jsonl(path):
    """[(prompt, completion, line number)] from a JSONL file of {"prompt": str, "completion": str}."""
    pairs = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise MiniPeftError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise MiniPeftError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(obj, dict):
            raise MiniPeftError(f'{where}: expected an object {{"prompt": ..., "completion": ...}}, got {type(obj).__name__}')
        for key in ("prompt", "completion"):
            if key not in obj:
                raise MiniPeftError(f'{where}: missing "{key}" (keys found: {", ".join(map(repr, obj)) or "none"})')
            if not isinstance(obj[key], str):
                raise MiniPeftError(f'{where}: "{key}" must be a string, got {type(obj[key]).__name__}')
        pairs.append((obj["prompt"], obj["completion"], n))
    if not pairs:
        raise MiniPeftError(f"{path}: the file is empty (no JSON lines)")
    return pairs


# ---- tokenizing ------------------------------------------------------------------------------------

def encode(tokenizer, text):
    """Token ids of user text: <|endoftext|> in it is plain text, never the special id."""
    return tokenizer.encode_ordinary(text)


def truncate_pair(prompt, completion, max_length):
    """(prompt, completion) cut to max_length tokens in all: the prompt from the left, the completion
    from the right; see the module docstring for the rule."""
    if len(prompt) + len(completion) <= max_length:
        return prompt, completion
    p = min(len(prompt), max(max_length // 2, max_length - len(completion)))
    return prompt[len(prompt) - p:], completion[:max_length - p]


def pair_examples(tokenizer, pairs, max_length, *, add_eot=True, truncate=True, warn=None, source="data"):
    """Examples from (prompt, completion[, line number]) texts: loss on the completion tokens only.

    add_eot appends the tokenizer's <|endoftext|> id to each completion. Longer than max_length:
    truncate (one warning via `warn`, default warnings.warn, counting them) or, with
    truncate=False, a MiniPeftError.
    """
    eot_id = tokenizer.eot_token
    if max_length < 2:
        raise MiniPeftError(f"max_length must be at least 2 (one token to read, one to predict), got {max_length}")
    examples, too_long = [], []
    for i, pair in enumerate(pairs):
        prompt_text, completion_text = pair[0], pair[1]
        where = f"{source}:{pair[2]}" if len(pair) > 2 else f"{source} example {i + 1}"
        prompt, completion = encode(tokenizer, prompt_text), encode(tokenizer, completion_text)
        if add_eot:
            completion.append(eot_id)
        if len(prompt) + len(completion) > max_length:
            too_long.append((where, len(prompt) + len(completion)))
            prompt, completion = truncate_pair(prompt, completion, max_length)
        example = Example(tuple(prompt + completion), len(prompt), where)
        if example.n_targets() < 1:
            raise MiniPeftError(f"{where}: nothing to predict: the completion is empty, or it is one token with no prompt before it")
        examples.append(example)
    if too_long:
        first, length = too_long[0]
        if not truncate:
            raise MiniPeftError(f"{len(too_long)} of {len(examples)} examples are longer than max_length {max_length} tokens "
                                f"(first: {first}, {length} tokens); raise the maximum length or allow truncation")
        (warn or _warn)(f"{len(too_long)} of {len(examples)} examples are longer than {max_length} tokens (first: {first}, "
                        f"{length} tokens) and were truncated: the prompt from the left, the completion from the right")
    return examples


def text_examples(tokenizer, text, max_length, source="text"):
    """Examples from plain text: consecutive chunks of max_length tokens, loss on every token."""
    if max_length < 2:
        raise MiniPeftError(f"max_length must be at least 2 (one token to read, one to predict), got {max_length}")
    ids = encode(tokenizer, text)
    chunks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    examples = [Example(tuple(c), 0, f"{source} tokens {i * max_length}-{i * max_length + len(c)}")
                for i, c in enumerate(chunks) if len(c) >= 2]
    if not examples:
        raise MiniPeftError(f"{source}: too short: {len(ids)} token(s), need at least 2")
    return examples


def load_examples(path, tokenizer, max_length, *, truncate=True, add_eot=True, warn=None):
    """Examples from a .txt (plain language modelling) or .jsonl (prompt/completion) file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        raise MiniPeftError(f"{path}: a folder, not a file; give a .txt or .jsonl file")
    if ext not in FORMATS:
        if not os.path.exists(path):
            raise MiniPeftError(f"{path}: no such file")
        raise MiniPeftError(f"{path}: unknown data format {ext or '(no extension)'!r}; use .txt (plain text) "
                            'or .jsonl (one {"prompt": ..., "completion": ...} per line)')
    if ext == ".txt":
        return text_examples(tokenizer, read_text(path), max_length, source=path)
    return pair_examples(tokenizer, read_jsonl(path), max_length, add_eot=add_eot, truncate=truncate, warn=warn, source=path)


def _warn(message):
    warnings.warn(message, stacklevel=3)


# ---- splitting and batching ------------------------------------------------------------------------

def split(examples, val_fraction=0.1, seed=0):
    """(train, held out): a fixed shuffle of the examples (by seed), the last val_fraction held out
    (at least one example, and at least one left for training)."""
    if len(examples) < 2:
        raise MiniPeftError(f"{len(examples)} example(s): need at least 2, one of them held out for the evaluation "
                            "loss (for a .txt file, a smaller maximum length gives more chunks)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    return [examples[i] for i in order[:-n_val]], [examples[i] for i in order[-n_val:]]


def collate(examples, pad_id=EOT_ID):
    """(input_ids, labels), each [B, T], right-padded to the longest example (labels -100 on padding).

    With right padding a causal model's real tokens never attend to the padding, so no attention
    mask is needed for the loss.
    """
    T = max(len(e.ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, :len(e.ids)] = torch.tensor(e.ids)
        labels[row, :len(e.ids)] = torch.tensor(e.labels())
    return ids, labels
