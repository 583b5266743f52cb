"""Token-by-token decoding shared by GPT-2 and T5: greedy or sampled, eos stop."""

import numbers

import torch

from .errors import MiniPeftError


def check_decoding(max_new_tokens, temperature, top_k, eos_token_id):
    """Refuse bad generate() arguments before any computation (GPT-2 and T5 alike)."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise MiniPeftError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise MiniPeftError(f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise MiniPeftError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if eos_token_id is not None and (not _is_int(eos_token_id) or eos_token_id < 0):
        raise MiniPeftError(f"eos_token_id must be None or a token id (an integer >= 0), got {eos_token_id!r}")


def _is_int(x):
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def pick_next(logits, temperature=0.0, top_k=None, generator=None):
    """logits [B, V] -> next token ids [B]. temperature 0 is greedy (argmax)."""
    check_decoding(0, temperature, top_k, None)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)


def decode(step, first_logits, max_new_tokens, *, eos_token_id=None, temperature=0.0, top_k=None, generator=None):
    """Run the decode loop. step(tokens [B, 1]) -> logits [B, V] for the next position.

    Rows that produced eos keep producing eos (the padding HF uses too) and the loop stops once
    every row has finished. Returns the new tokens [B, n] with n <= max_new_tokens.
    """
    logits, out = first_logits, []
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for i in range(max_new_tokens):
        token = pick_next(logits, temperature, top_k, generator)
        if eos_token_id is not None:
            token = token.masked_fill(done, eos_token_id)
            done |= token == eos_token_id
        out.append(token)
        if i == max_new_tokens - 1 or bool(done.all()):
            break
        logits = step(token[:, None])
    if not out:
        return first_logits.new_zeros(first_logits.shape[0], 0, dtype=torch.long)
    return torch.stack(out, 1)
