"""Prefix Tuning (Li & Liang, 2021): trainable keys/values of P virtual tokens at every layer.

Sites: GPT-2 has one (self-attention); T5 has three, each with its own parameters: encoder
self-attention, decoder self-attention and decoder cross-attention (the paper's
[PREFIX; x; PREFIX'; y]; peft's encoder-decoder prefix reaches the decoder only).

Reparameterisation (default, as in the paper, for stability): per site, an embedding [P, d_model]
goes through Linear(d_model, hidden=512) -> tanh -> Linear(hidden, n_layer * 2 * n_head * head_dim).
The flat output [P, n_layer * 2 * H * D] is laid out like peft's, [P, layer, key|value, head, dim].
`bake()` computes it once and drops the MLP; saved adapters always hold the baked prefix.
reparam=False trains the flat prefix directly.

Init: random, or init_ids (a text's token ids): the frozen model's own keys/values of that text
(the paper's real-word init, much better with little data). With the MLP, the real-word values
are a fixed offset and the MLP (last layer zero at the start) learns the change.

where: "all" layers (default); "embedding": the ablation that tunes only the input layer (a
P x d_model prompt, same MLP); "infix": GPT only, [x; INFIX; y] — the slots sit before token
`infix_at[b]` of each row (pass infix_at= to forward/generate: B indices, or one for all rows).

Dtype: the prefix, MLP and real-word offsets are fp32 whatever the model's dtype; the keys/values
reach the model cast to its dtype.
"""

import torch
import torch.nn as nn

from .adapter import Adapter, model_dtype
from ..checks import reading_values
from ..errors import MiniPeftError

WHERE = ("all", "embedding", "infix")


class PrefixTuning(Adapter):
    method = "prefix"

    def __init__(self, model, n_prefix=10, *, where="all", reparam=True, hidden=512, init_ids=None, dropout=0.0):
        super().__init__(model)
        if where not in WHERE:
            raise MiniPeftError(f"unknown prefix placement {where!r}; choose from {WHERE}")
        if where == "infix" and model.arch != "gpt":
            raise MiniPeftError("infix ([x; INFIX; y]) is for decoder-only models; on T5 the decoder prefix already sits between x and y")
        if n_prefix < 1:
            raise MiniPeftError(f"n_prefix must be >= 1; got {n_prefix}")
        # hidden only sizes the MLP: saved adapters hold the baked prefix, so it is not a setting
        self.n_prefix, self.where, self.reparam = n_prefix, where, reparam
        self.dropout = nn.Dropout(dropout)
        d_model = model.input_embeddings().weight.shape[1]
        # {site: (width of one slot)}: every layer's key and value, or one embedding for "embedding"
        self.widths = ({"prompt": d_model} if where == "embedding" else
                       {site: L * 2 * H * D for site, (L, H, D) in model.prefix_sites().items()})
        offsets = self._real_word_values(init_ids) if init_ids is not None else {}
        device = model.input_embeddings().weight.device
        self.prefix = nn.ParameterDict()  # direct: the flat prefix [P, width] per site
        self.mlp = nn.ModuleDict()        # reparameterised: embedding -> MLP per site
        for site, width in self.widths.items():
            if reparam:
                mlp = nn.Sequential(nn.Embedding(n_prefix, d_model), nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, width))
                if site in offsets:  # start exactly at the real-word values
                    nn.init.zeros_(mlp[3].weight)
                    nn.init.zeros_(mlp[3].bias)
                self.mlp[site] = mlp.to(device)
            else:
                self.prefix[site] = nn.Parameter(offsets[site].clone() if site in offsets else torch.randn(n_prefix, width, device=device))
        for site, values in offsets.items():
            if reparam:
                self.register_buffer(f"offset_{site}", values)

    def _real_word_values(self, init_ids):
        """{site: [P, width]} (fp32) from the frozen model's keys/values of init_ids, repeated to P tokens."""
        ids = torch.as_tensor(init_ids, dtype=torch.long).reshape(-1)
        if ids.numel() == 0:
            raise MiniPeftError("init_ids is empty; give the token ids of a text (e.g. the task's name)")
        ids = ids.repeat(self.n_prefix // len(ids) + 1)[: self.n_prefix][None].to(self.model.input_embeddings().weight.device)
        if self.where == "embedding":
            return {"prompt": self.model.input_embeddings()(ids)[0].detach().float()}
        out = {}
        for site, pairs in self.model.prefix_from_tokens(ids).items():
            kv = torch.stack([torch.stack([k[0], v[0]]) for k, v in pairs])   # [L, 2, H, P, D]
            out[site] = kv.permute(3, 0, 1, 2, 4).reshape(self.n_prefix, -1).float()  # [P, L*2*H*D]
        return out

    def flat(self, site):
        """The flat prefix [P, width] of one site, fp32 (the hooks cast it to the model's dtype)."""
        if site in self.prefix:
            return self.prefix[site]
        mlp = self.mlp[site]
        out = mlp[1:](mlp[0].weight).float()  # autocast makes the MLP's output bf16
        offset = getattr(self, f"offset_{site}", None)
        return out if offset is None else out + offset

    def sites(self):
        """{site: [(key, value)] * n_layer}, each [1, H, P, D], from the flat prefixes."""
        sites, dtype = {}, model_dtype(self.model)
        for site, (L, H, D) in self.model.prefix_sites().items():
            kv = self.dropout(self.flat(site)).to(dtype).view(self.n_prefix, L, 2, H, D).permute(1, 2, 3, 0, 4)  # [L, 2, H, P, D]
            sites[site] = [(kv[i, 0][None], kv[i, 1][None]) for i in range(L)]
        return sites

    def model_kwargs(self, batch_size):
        if self.where == "embedding":
            return {"prompt": self.dropout(self.flat("prompt")).to(model_dtype(self.model))[None]}
        return {"prefix": self.model.pack_prefix(self.sites())}

    def forward(self, input_ids, *args, infix_at=None, **kwargs):
        return super().forward(input_ids, *args, **self._infix(infix_at, input_ids), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, *args, infix_at=None, **kwargs):
        return super().generate(input_ids, *args, **self._infix(infix_at, input_ids), **kwargs)

    def _infix(self, infix_at, input_ids):
        """{"infix_at": [B] long on the input's device} from infix_at: B ints, or one int for all rows."""
        if self.where != "infix":
            if infix_at is not None:
                raise MiniPeftError("infix_at is only for where='infix'")
            return {}
        B, T = input_ids.shape
        need = f"infix_at: the index (0 to {T}) of the first token of y, one int for all rows or {B} ints (one per row)"
        if infix_at is None:
            raise MiniPeftError(f"where='infix' needs {need}")
        try:
            at = torch.as_tensor(infix_at, device=input_ids.device)
        except (TypeError, ValueError, RuntimeError):
            raise MiniPeftError(f"{need}; got {infix_at!r:.100}") from None
        if at.is_floating_point() or at.is_complex() or at.dtype == torch.bool or at.shape not in ((), (B,)):
            raise MiniPeftError(f"{need}; got a {at.dtype} of shape {list(at.shape)}")
        if reading_values() and (bool((at < 0).any()) or bool((at > T).any())):
            raise MiniPeftError(f"{need}; got {at.tolist()}")
        return {"infix_at": at.long().expand(B).contiguous()}

    @torch.no_grad()
    def bake(self):
        """Compute the prefix once and drop the MLP: same outputs, only [P, width] per site left."""
        for site in self.widths:
            self.prefix[site] = nn.Parameter(self.flat(site).detach().clone())
        self.mlp = nn.ModuleDict()
        for site in self.widths:
            if hasattr(self, f"offset_{site}"):
                delattr(self, f"offset_{site}")
        self.reparam = False
        return self

    # adapter files hold the baked prefix only
    def settings(self):
        return {"n_prefix": self.n_prefix, "where": self.where, "reparam": False}

    def adapter_state(self):
        return {f"prefix.{site}": self.flat(site) for site in self.widths}

    def load_adapter_state(self, tensors, path):
        self._load_named(tensors, {f"prefix.{site}": self.prefix[site] for site in self.widths}, path)
