"""Token-by-token decoding shared by GPT-2 and T5: greedy or sampled, eos stop."""

import torch


def pick_next(logits, temperature=0.0, top_k=None, generator=None):
    """logits [B, V] -> next token ids [B]. temperature 0 is greedy (argmax). Arguments as
    check_decoding returns them (generate checks them once, not at every token)."""
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
