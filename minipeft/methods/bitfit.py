"""BitFit (Ben Zaken et al., 2022): freeze every weight, train only bias terms.

What trains: the biases themselves. The adapter holds its own fp32 copy of each chosen bias
slot, starting at the base model's value (zeros where the slot is absent: T5 has no biases), and
the base model is never written to.
Why not a delta from zero: weight decay. AdamW shrinks what it trains towards zero, so a trained
delta would be pulled back towards the pretrained bias; training the biases themselves pulls
them towards zero, exactly as training the model's own biases does (tested against transformers).
How they reach the model: through its bias_delta hook, as own bias - frozen bias, which the model
adds back to its frozen bias (the same value, up to the rounding of the two operations); a slot
the model lacks gets the own bias alone.

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
        decoder position). The biases and head are fp32 whatever the model's dtype."""
        super().__init__(model)
        if n_classes is not None and (type(n_classes) is not int or n_classes < 2):
            raise MiniPeftError(f"n_classes must be an int >= 2 (or None for no task head); got {n_classes!r}")
        widths = {name: module.parts[role] for name, module, _, role in bias_slots(model)}
        roles = {name: role for name, _, _, role in bias_slots(model)}
        if slots is None:
            self.terms = resolve_terms(terms)
            slots = [name for name in widths if roles[name] in self.terms]
        else:
            self.terms = None
            slots = [slots] if isinstance(slots, str) else list(slots)  # one slot name, or a list of them
            unknown = [s for s in slots if s not in widths]
            if unknown:
                raise MiniPeftError(f"not bias slots of this model: {unknown[:5]}")
            repeated = sorted({s for s in slots if slots.count(s) > 1})
            if repeated:
                raise MiniPeftError(f"bias slots given more than once: {repeated[:5]}; name each slot once")
        if not slots:
            raise MiniPeftError(f"BitFit needs at least one bias slot to train; got none (terms={terms!r}, slots={slots!r})")
        self.slots = slots
        # nn.ParameterDict keys cannot contain dots: index by position, names kept in self.slots
        # each starts as a copy of the model's bias, or zeros where the model has none
        frozen = frozen_biases(model)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(widths[s], device=_device(model)) if frozen[s] is None
                                                    else frozen[s].detach().float().clone()) for s in self.slots)
        # and a copy of the frozen bias to subtract, so that a call never reads the model's parameters
        # outside the model's forward (sharded by FSDP there, they hold no values)
        for i, s in enumerate(self.slots):
            if frozen[s] is not None:
                self.register_buffer(f"frozen_{i}", frozen[s].detach().clone(), persistent=False)
        d_model = model.input_embeddings().weight.shape[1]
        self.head = None if n_classes is None else nn.Linear(d_model, n_classes).to(_device(model))

    def settings(self):
        return {"slots": self.slots, "n_classes": None if self.head is None else self.head.out_features}

    def model_kwargs(self, batch_size):
        """bias_delta {slot: own bias - frozen bias}, which the model adds back to its frozen bias."""
        dtype, deltas = model_dtype(self.model), {}
        for i, (name, bias) in enumerate(zip(self.slots, self.biases)):
            bias = bias.to(dtype)  # fp32 -> a bf16/fp16 model's dtype (gradients flow back through the cast)
            frozen = getattr(self, f"frozen_{i}", None)
            deltas[name] = bias if frozen is None else bias - frozen.to(dtype)
        return {"bias_delta": deltas}

    def adapter_state(self):
        state = dict(zip(self.slots, self.biases))  # the biases themselves (files of format 1 held deltas)
        if self.head is not None:
            state.update({"head.weight": self.head.weight, "head.bias": self.head.bias})
        return state

    def load_adapter_state(self, tensors, path):
        self._load_named(tensors, self.adapter_state(), path)

    def upgrade_loaded(self, version):
        """Files of format 1 held deltas from the base model's biases: the bias is base + delta."""
        if version < 2:
            frozen = frozen_biases(self.model)
            with torch.no_grad():
                for name, bias in zip(self.slots, self.biases):
                    if frozen[name] is not None:
                        bias.add_(frozen[name].float())

    def classify(self, input_ids, attention_mask=None):
        """Task-head logits [B, n_classes] (fp32): GPT-2 reads the last real token (left or right
        padding), T5 the first decoder step."""
        if self.head is None:
            raise MiniPeftError("this BitFit has no task head: create it with n_classes=")
        B = input_ids.shape[0]
        if self.model.arch == "t5":
            start = torch.zeros(B, 1, dtype=torch.long, device=input_ids.device)
            h = self.hidden_states(input_ids, start, attention_mask)[:, 0]
        else:
            last = last_token_index(input_ids, attention_mask)  # [B], checked before the forward
            h = self.hidden_states(input_ids, attention_mask)[torch.arange(B, device=last.device), last]
        return self.head(h.to(self.head.weight.dtype))  # a bf16 model's hidden state, into the fp32 head

    def merged(self):
        """A plain copy of the model with the trained biases written in (absent slots enabled)."""
        model = copy.deepcopy(self.model)
        slots = {name: (module, attr, role) for name, module, attr, role in bias_slots(model)}
        with torch.no_grad():
            for name, bias in zip(self.slots, self.biases):
                module, attr, role = slots[name]
                module.enable_bias(role)
                getattr(module, attr).copy_(bias)  # cast to the model's dtype
        for p in model.parameters():
            p.requires_grad_(True)
        return model


def frozen_biases(model):
    """{slot name: the model's bias parameter, or None where the slot is absent}"""
    return {name: getattr(module, attr) for name, module, attr, _ in bias_slots(model)}


def _device(model):
    return next(model.parameters()).device
