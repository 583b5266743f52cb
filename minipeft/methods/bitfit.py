"""BitFit (Ben Zaken et al., 2022): freeze every weight, train only bias terms.

The trained quantity is a delta per chosen bias slot, zero at the start, added to the frozen
bias through the model's bias_delta hook, so the base model is never written to. T5 has no
biases: its slots are absent and the delta alone is the bias (the model is unchanged at step 0).

Terms (roles of bias slots): query, key, value, attn_out, mlp_in (the N -> 4N layer), mlp_out,
norm. terms="paper" is the paper's cheap subset, query + mlp_in. GPT-2 fuses q/k/v in one
projection, but each has its own slot, so terms=["query"] trains exactly the query slice.
The key bias gets an exactly-zero gradient in theory (softmax ignores a per-query constant).
"""

import copy

import torch
import torch.nn as nn

from .adapter import Adapter, last_token_index, model_dtype
from ..errors import MiniPeftError
from ..models.layers import bias_slots

TERMS = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out", "norm")
PAPER_TERMS = ("query", "mlp_in")


def resolve_terms(terms):
    if terms == "all":
        return TERMS
    if terms == "paper":
        return PAPER_TERMS
    terms = (terms,) if isinstance(terms, str) else tuple(terms)
    unknown = [t for t in terms if t not in TERMS]
    if unknown or not terms:
        raise MiniPeftError(f"unknown BitFit term(s) {unknown or terms}; choose from 'all', 'paper' or {list(TERMS)}")
    return terms


class BitFit(Adapter):
    method = "bitfit"

    def __init__(self, model, terms="all", slots=None, n_classes=None):
        """terms: 'all', 'paper' (query + mlp_in) or a list of roles; slots: explicit slot names
        instead (one name or a list, e.g. a random subset for an ablation); n_classes: add a
        trainable task head (Linear(d_model, n_classes) on the last real token, or T5's first
        decoder position). Deltas and head are fp32 whatever the model's dtype."""
        super().__init__(model)
        if n_classes is not None and (type(n_classes) is not int or n_classes < 2):
            raise MiniPeftError(f"n_classes must be an int >= 2 (or None for no task head); got {n_classes!r}")
        all_slots = {name: module.parts[role] for name, module, _, role in bias_slots(model)}
        roles = {name: role for name, _, _, role in bias_slots(model)}
        if slots is None:
            self.terms = resolve_terms(terms)
            slots = [name for name in all_slots if roles[name] in self.terms]
        else:
            self.terms = None
            slots = [slots] if isinstance(slots, str) else list(slots)  # one slot name, or a list of them
            unknown = [s for s in slots if s not in all_slots]
            if unknown:
                raise MiniPeftError(f"not bias slots of this model: {unknown[:5]}")
            repeated = sorted({s for s in slots if slots.count(s) > 1})
            if repeated:
                raise MiniPeftError(f"bias slots given more than once: {repeated[:5]}; name each slot once")
        if not slots:
            raise MiniPeftError(f"BitFit needs at least one bias slot to train; got none (terms={terms!r}, slots={slots!r})")
        self.slots = slots
        # nn.ParameterDict keys cannot contain dots: index by position, names kept in self.slots
        self.deltas = nn.ParameterList(nn.Parameter(torch.zeros(all_slots[s], device=_device(model))) for s in self.slots)
        d_model = model.input_embeddings().weight.shape[1]
        self.head = None if n_classes is None else nn.Linear(d_model, n_classes).to(_device(model))

    def settings(self):
        return {"slots": self.slots, "n_classes": None if self.head is None else self.head.out_features}

    def hooks(self, batch_size):
        dtype = model_dtype(self.model)  # the fp32 deltas reach a bf16/fp16 model in its dtype
        return {"bias_delta": {name: d.to(dtype) for name, d in zip(self.slots, self.deltas)}}

    def adapter_state(self):
        state = dict(zip(self.slots, self.deltas))
        if self.head is not None:
            state.update({"head.weight": self.head.weight, "head.bias": self.head.bias})
        return state

    def load_adapter_state(self, tensors, path):
        self._load_named(tensors, self.adapter_state(), path)

    def classify(self, input_ids, attention_mask=None):
        """Task-head logits [B, n_classes] (fp32): GPT-2 reads the last real token (left or right
        padding), T5 the first decoder step."""
        if self.head is None:
            raise MiniPeftError("this BitFit has no task head: create it with n_classes=")
        B = input_ids.shape[0]
        if self.model.arch == "t5":
            start = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)
            h = self(input_ids, start, attention_mask, hidden=True)[:, 0]
        else:
            last = last_token_index(input_ids, attention_mask)  # [B], checked before the forward
            h = self(input_ids, attention_mask, hidden=True)[torch.arange(B, device=last.device), last]
        return self.head(h.to(self.head.weight.dtype))  # a bf16 model's hidden state, into the fp32 head

    def merged(self):
        """A plain copy of the model with the trained biases written in (absent slots enabled)."""
        model = copy.deepcopy(self.model)
        slots = {name: (module, attr, role) for name, module, attr, role in bias_slots(model)}
        with torch.no_grad():
            for name, delta in zip(self.slots, self.deltas):
                module, attr, role = slots[name]
                module.enable_bias(role)
                getattr(module, attr).add_(delta)
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def _device(model):
    return next(model.parameters()).device
