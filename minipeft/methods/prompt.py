"""Prompt Tuning (Lester et al., 2021): a trainable soft prompt [P, d_model] at the input layer only.

The prompt is prepended to the token embeddings (for T5, the encoder's), through the model's
prompt hook. Initialisations, as in the paper:
  "random"  uniform in [-0.5, 0.5]
  "vocab"   embeddings of tokens sampled from the 5,000 most frequent (token_counts gives the
            frequencies; without it, the first 5,000 ids, which for GPT-2's byte-level BPE are
            mostly short, frequent pieces)
  "labels"  one slot per class: the mean embedding of that label's sub-tokens; the remaining
            slots sampled as in "vocab" (the paper's best)
  "text"    the embeddings of a text's tokens, repeated to fill P slots

Ensembling: n_ensemble=K prompts for one task. The batch is repeated K times, each copy with its
own prompt, so the frozen model runs once for all K; `classify` votes by majority.

The prompt is fp32 whatever the model's dtype; it reaches a bf16/fp16 model cast to that dtype.
"""

import sys

import torch
import torch.nn as nn

from .adapter import Adapter, class_scores, model_dtype
from ..checks import check_gpt_call, check_token_ids, reading_values
from ..errors import MiniPeftError

TOP_VOCAB = 5000


def init_prompt(embeddings, n_prompt, init="random", *, label_ids=None, text_ids=None, token_counts=None, generator=None):
    """One prompt [P, d] from the input embedding matrix [V, d], in its dtype.

    label_ids: one entry per class, each a list of ints or a 1-D tensor (a 1-D tensor of C ids is
    C one-token labels); text_ids: a list of ints or a 1-D tensor."""
    V, d = embeddings.shape
    E = embeddings.detach()

    def sample_vocab(n):
        top = torch.argsort(token_counts, descending=True)[:TOP_VOCAB] if token_counts is not None else torch.arange(min(TOP_VOCAB, V))
        pick = torch.randperm(len(top), generator=generator)[:n] if n <= len(top) else torch.randint(len(top), (n,), generator=generator)
        return E[top[pick].to(E.device)]

    if init == "random":
        return (torch.rand(n_prompt, d, generator=generator) - 0.5).to(E)
    if init == "vocab":
        return sample_vocab(n_prompt).clone()
    if init == "labels":
        n_labels = 0 if label_ids is None else len(label_ids)
        if not 1 <= n_labels <= n_prompt:
            raise MiniPeftError(f"init='labels' needs between 1 and n_prompt={n_prompt} labels; got {n_labels}")
        labels = torch.stack([E[check_token_ids(f"label_ids[{c}]", ids, V).to(E.device)].mean(0) for c, ids in enumerate(label_ids)])
        return torch.cat([labels, sample_vocab(n_prompt - n_labels)]).clone()
    if init == "text":
        if text_ids is None:
            raise MiniPeftError("init='text' needs text_ids, the token ids of the text")
        ids = check_token_ids("text_ids", text_ids, V).to(E.device)
        return E[ids.repeat(n_prompt // len(ids) + 1)[:n_prompt]].clone()
    raise MiniPeftError(f"unknown prompt init {init!r}; choose 'random', 'vocab', 'labels' or 'text'")


class PromptTuning(Adapter):
    method = "prompt"

    def __init__(self, model, n_prompt=20, init="random", *, n_ensemble=1, label_ids=None, text_ids=None,
                 token_counts=None, seed=0):
        super().__init__(model)
        if n_prompt < 1 or n_ensemble < 1:
            raise MiniPeftError(f"n_prompt and n_ensemble must be >= 1; got {n_prompt}, {n_ensemble}")
        g = torch.Generator().manual_seed(seed)
        E = model.input_embeddings().weight
        self.prompt = nn.Parameter(torch.stack([
            init_prompt(E, n_prompt, init, label_ids=label_ids, text_ids=text_ids, token_counts=token_counts, generator=g)
            for _ in range(n_ensemble)]).float())                               # [K, P, d], fp32

    @property
    def n_ensemble(self):
        return self.prompt.shape[0]

    def settings(self):
        return {"n_prompt": self.prompt.shape[1], "n_ensemble": self.n_ensemble}

    def adapter_state(self):
        return {"prompt": self.prompt}

    def load_adapter_state(self, tensors, path):
        self._load_named(tensors, {"prompt": self.prompt}, path)

    def model_kwargs(self, batch_size):
        K, prompt = self.n_ensemble, self.prompt.to(model_dtype(self.model))  # in the model's dtype
        if K == 1:
            return {"prompt": prompt}                                      # [1, P, d], broadcast
        return {"prompt": prompt.repeat_interleave(batch_size // K, 0)}   # rows are K copies of the batch

    def _repeat(self, x, B):
        return x.repeat(self.n_ensemble, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == B else x

    def forward(self, input_ids, *args, **kwargs):
        """The model's forward with the prompt prepended (logits, or the loss given labels).

        With K prompts, every [B, ...] argument is repeated K times: outputs are [K * B, ...], copy
        k of the batch using prompt k (view them as [K, B, ...]). The loss is the mean over all."""
        return self._run(self.model, input_ids, args, kwargs)

    def hidden_states(self, input_ids, *args, **kwargs):
        """The model's final hidden states with the prompt prepended (the prompt slots dropped)."""
        return self._run(self.model.hidden_states, input_ids, args, kwargs)

    def _run(self, call, input_ids, args, kwargs):
        prompt = self.prompt.to(model_dtype(self.model))                   # [K, P, d] in the model's dtype
        if self._shared_prompt_applies(input_ids, prompt, args, kwargs):
            # GPT-2, one prompt for every row: the prompt slots come first and, the model being causal,
            # see only each other (and a prefix), so their states are the same in every row. Run them
            # once at batch 1 and hand the tokens their keys/values as a prefix: the same outputs and
            # gradients as cat([prompt, wte(ids)], 1) in each of the B rows, without B - 1 copies of
            # the prompt's work (with P = 100 on 8 rows of 30 tokens: 340 positions instead of 1,040).
            prefix = self.model.keys_values(prompt, kwargs.pop("prefix", None))
            return call(input_ids, *args, prefix=prefix, **kwargs)
        B = input_ids.shape[0]
        args = [self._repeat(a, B) for a in args]
        kwargs = {k: self._repeat(v, B) for k, v in kwargs.items()}
        input_ids = self._repeat(input_ids, B)
        return call(input_ids, *args, **self.model_kwargs(input_ids.shape[0]), **kwargs)  # the model prepends the prompt

    def _shared_prompt_applies(self, input_ids, prompt, args, kwargs):
        """Whether the rows can share one run of the prompt (see _run): GPT-2, several rows, one
        prompt, at most one prefix for all rows, no left padding with positions="real" (a leading
        pad would take its position after the prompt slots; with "plain" every slot keeps its
        index), no per-row slot masks, infix or bias deltas, no cache, no dropout drawing a different
        mask per row, and everything within the context (else the plain path raises the clear error).
        Not under FSDP either: its blocks would run twice in one forward, which its resharding forbids."""
        model = self.model
        given = {k for k, v in kwargs.items() if v is not None and not (k == "bias_delta" and not v)}
        if model.arch != "gpt" or self.n_ensemble != 1 or not given <= {"attention_mask", "labels", "prefix", "positions"}:
            return False  # T5, an ensemble, or hooks that differ per row (masks, infix, bias deltas) or a cache
        attention_mask, prefix = args[0] if args else kwargs.get("attention_mask"), kwargs.get("prefix")
        positions = kwargs.get("positions", "real")
        B, T = check_gpt_call(model, input_ids, attention_mask, prefix=prefix, prompt=prompt, positions=positions)  # read below: checked first
        if B < 2 or (model.training and model.config.any_dropout) or fsdp_sharded(model.h[0]):
            return False
        if not reading_values() or (positions == "real" and attention_mask is not None and not bool(attention_mask[:, 0].all())):
            return False
        if prefix is not None and any(t.shape[0] != 1 for pair in prefix for t in pair):
            return False
        n_prefix = 0 if prefix is None else prefix[0][0].shape[2]
        return n_prefix + self.prompt.shape[1] + T <= model.config.n_positions

    @torch.no_grad()
    def generate(self, input_ids, *args, **kwargs):
        if self.n_ensemble != 1:
            raise MiniPeftError("generate with an ensemble of prompts: pick one with .member(k) first")
        return super().generate(input_ids, *args, **kwargs)

    def member(self, k):
        """Prompt k of an ensemble as a single-prompt adapter (sharing the model)."""
        if type(k) is not int or not 0 <= k < self.n_ensemble:
            raise MiniPeftError(f"member k must be an int in [0, {self.n_ensemble}) (this ensemble has {self.n_ensemble} prompts); got {k!r}")
        single = PromptTuning.__new__(PromptTuning)
        Adapter.__init__(single, self.model)
        single.prompt = nn.Parameter(self.prompt[k:k + 1].detach().clone())
        return single

    @torch.no_grad()
    def classify(self, input_ids, attention_mask, label_token_ids):
        """Class predictions from the next-token scores of each label's first token.

        Returns (per_prompt [K, B], ensemble [B]): each prompt's argmax, and the majority vote
        (ties go to the class with the higher mean probability across prompts).
        """
        scores = class_scores(self, input_ids, attention_mask, label_token_ids)  # [K * B, C]
        K, B = self.n_ensemble, input_ids.shape[0]
        probs = scores.softmax(-1).view(K, B, -1)
        per_prompt = probs.argmax(-1)                                              # [K, B]
        votes = nn.functional.one_hot(per_prompt, probs.shape[-1]).sum(0).float()  # [B, C]
        return per_prompt, (votes + probs.mean(0) * 1e-3).argmax(-1)


def fsdp_sharded(module):
    """Whether FSDP has sharded module (never before torch.distributed.fsdp is imported: its import
    takes a second, which `import minipeft` does not pay)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)
