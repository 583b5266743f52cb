"""Many tasks, one frozen model: a bank of adapters, and batches whose rows each name their task.

Each row gets its own adapter's hooks in the same forward pass:
  BitFit   per-row bias deltas [B, width] (zero for rows of other tasks)
  prompt   per-row prompts, left-padded to the longest with prompt_mask (padding slots take no
           position and are never attended to)
  prefix   per-row keys/values per site, padded to the longest with prefix_mask
Rows may mix methods. A row equals running its task alone (the tests check < 1e-5).
"""

import torch
import torch.nn as nn

from ..io.adapter_file import fingerprint, same_base
from .adapter import Adapter, model_dtype
from ..errors import MiniPeftError
from .prefix import PrefixTuning
from .prompt import PromptTuning


class AdapterBank(nn.Module):
    def __init__(self, model, adapters):
        """adapters: {task name: adapter}, each trained on this model (checked by fingerprint)."""
        super().__init__()
        self.model = model
        base = fingerprint(model)
        for name, a in adapters.items():
            if not isinstance(a, Adapter):
                raise MiniPeftError(f"task {name!r}: expected a minipeft adapter, got {type(a).__name__}")
            if a.model is not model and not same_base(fingerprint(a.model), base):
                raise MiniPeftError(f"task {name!r}: its adapter was made for a different base model")
            if model_dtype(a.model) != model_dtype(model):
                raise MiniPeftError(f"task {name!r}: its adapter runs a {model_dtype(a.model)} copy of the model, the bank a "
                                    f"{model_dtype(model)} one; load the adapter onto the bank's model")
            if isinstance(a, PromptTuning) and a.n_ensemble != 1:
                raise MiniPeftError(f"task {name!r}: an ensemble of prompts; add its members (.member(k)) as tasks")
            if isinstance(a, PrefixTuning) and a.where == "infix":
                raise MiniPeftError(f"task {name!r}: infix adapters need per-row infix positions; run them alone")
        # a ModuleList, so that .eval(), .to() and .parameters() reach every adapter (task names are
        # free text: a ModuleDict would refuse names with dots)
        self.adapter_list = nn.ModuleList(adapters.values())
        self.index = {name: i for i, name in enumerate(adapters)}

    @property
    def adapters(self):
        """{task name: adapter}"""
        return {name: self.adapter_list[i] for name, i in self.index.items()}

    def model_kwargs(self, tasks):
        unknown = sorted({t for t in tasks if t not in self.index})
        if unknown:
            raise MiniPeftError(f"unknown task(s) {unknown}; the bank has {sorted(self.index)}")
        rows = [self._row_kwargs(t) for t in tasks]
        out = {}
        deltas = [r.get("bias_delta", {}) for r in rows]
        names = sorted({n for d in deltas for n in d})
        if names:
            like = {n: next(d[n] for d in deltas if n in d) for n in names}
            out["bias_delta"] = {n: torch.stack([d.get(n, torch.zeros_like(like[n])) for d in deltas]) for n in names}
        prompts = [r.get("prompt") for r in rows]
        if any(p is not None for p in prompts):
            out["prompt"], out["prompt_mask"] = _pad_left([None if p is None else p[0] for p in prompts])
        sites = [r.get("prefix_sites") for r in rows]
        if any(s is not None for s in sites):
            packed, masks = {}, {}
            for site, (L, H, D) in self.model.prefix_sites().items():
                layers = []
                for i in range(L):
                    k, _ = _pad_left([None if s is None else s[site][i][0][0].transpose(0, 1) for s in sites])  # [B, P, H, D]
                    v, mask = _pad_left([None if s is None else s[site][i][1][0].transpose(0, 1) for s in sites])
                    layers.append((k.transpose(1, 2), v.transpose(1, 2)))                                     # [B, H, P, D]
                packed[site], masks[site] = layers, mask
            out["prefix"], out["prefix_mask"] = self.model.pack_prefix(packed), self.model.pack_prefix(masks)
        return out

    def _row_kwargs(self, task):
        a = self.adapter_list[self.index[task]]
        if isinstance(a, PrefixTuning) and a.where != "embedding":
            return {"prefix_sites": a.sites()}
        return a.model_kwargs(1)

    def forward(self, input_ids, *args, tasks, **kwargs):
        _check_tasks(tasks, input_ids)
        return self.model(input_ids, *args, **self.model_kwargs(tasks), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, *args, tasks, **kwargs):
        _check_tasks(tasks, input_ids)
        return self.model.generate(input_ids, *args, **self.model_kwargs(tasks), **kwargs)


def _check_tasks(tasks, input_ids):
    if len(tasks) != input_ids.shape[0]:
        raise MiniPeftError(f"tasks names {len(tasks)} rows but the batch has {input_ids.shape[0]}")


def _pad_left(items):
    """[P_i, ...] per row (None = no slots) -> (stacked [B, P_max, ...], mask [B, P_max]); padding first."""
    like = next(x for x in items if x is not None)
    P = max(0 if x is None else x.shape[0] for x in items)
    out = like.new_zeros(len(items), P, *like.shape[1:])
    mask = torch.zeros(len(items), P, dtype=torch.bool, device=like.device)
    for b, x in enumerate(items):
        if x is not None:
            out[b, P - x.shape[0]:] = x
            mask[b, P - x.shape[0]:] = True
    return out, mask
