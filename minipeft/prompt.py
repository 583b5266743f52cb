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
"""

import torch
import torch.nn as nn

from .adapter import Adapter
from .errors import MiniPeftError

TOP_VOCAB = 5000


def init_prompt(embeddings, n_prompt, init="random", *, label_ids=None, text_ids=None, token_counts=None, generator=None):
    """One prompt [P, d] from the input embedding matrix [V, d]."""
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
        if not label_ids or len(label_ids) > n_prompt:
            raise MiniPeftError(f"init='labels' needs between 1 and n_prompt={n_prompt} labels; got {len(label_ids or [])}")
        labels = torch.stack([E[torch.as_tensor(ids, device=E.device)].mean(0) for ids in label_ids])
        return torch.cat([labels, sample_vocab(n_prompt - len(label_ids))]).clone()
    if init == "text":
        if not text_ids:
            raise MiniPeftError("init='text' needs text_ids, the token ids of the text")
        ids = torch.as_tensor(text_ids, device=E.device).repeat(n_prompt // len(text_ids) + 1)[:n_prompt]
        return E[ids].clone()
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
            for _ in range(n_ensemble)]))                                       # [K, P, d]

    @property
    def n_ensemble(self):
        return self.prompt.shape[0]

    def settings(self):
        return {"n_prompt": self.prompt.shape[1], "n_ensemble": self.n_ensemble}

    def adapter_state(self):
        return {"prompt": self.prompt}

    def load_adapter_state(self, tensors, path):
        self._load_named(tensors, {"prompt": self.prompt}, path)

    def hooks(self, batch_size):
        K = self.n_ensemble
        if K == 1:
            return {"prompt": self.prompt}                                      # [1, P, d], broadcast
        return {"prompt": self.prompt.repeat_interleave(batch_size // K, 0)}   # rows are K copies of the batch

    def _repeat(self, x, B):
        return x.repeat(self.n_ensemble, *([1] * (x.dim() - 1))) if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == B else x

    def forward(self, input_ids, *args, **kwargs):
        """With K prompts, every [B, ...] argument is repeated K times: outputs are [K * B, ...],
        copy k of the batch using prompt k (view them as [K, B, ...]). The loss is the mean over all."""
        B = input_ids.shape[0]
        args = [self._repeat(a, B) for a in args]
        kwargs = {k: self._repeat(v, B) for k, v in kwargs.items()}
        return super().forward(self._repeat(input_ids, B), *args, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, *args, **kwargs):
        if self.n_ensemble != 1:
            raise MiniPeftError("generate with an ensemble of prompts: pick one with .member(k) first")
        return super().generate(input_ids, *args, **kwargs)

    def member(self, k):
        """Prompt k of an ensemble as a single-prompt adapter (sharing the model)."""
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


def class_scores(model, input_ids, attention_mask, label_token_ids, **forward_kwargs):
    """Scores [B, C] of each class's first label token at the next position.

    GPT: the logits after the last real token (right padding). T5: the first decoder step.
    `model` is a model or an adapter wrapping one.
    """
    base = model.model if isinstance(model, Adapter) else model
    labels = torch.as_tensor([ids[0] for ids in label_token_ids], device=input_ids.device)
    if base.arch == "t5":
        start = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        logits = model(input_ids, start, attention_mask, **forward_kwargs)[:, 0]
    else:
        logits = model(input_ids, attention_mask, **forward_kwargs)      # [B', T, V]
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        last = mask.sum(1) - 1
        last = last.repeat(logits.shape[0] // len(last))                  # ensembles repeat the batch
        logits = logits[torch.arange(logits.shape[0]), last]
    return logits[:, labels]
