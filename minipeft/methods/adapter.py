"""What BitFit, PrefixTuning and PromptTuning share: the wrapper, the report, save and load.

An adapter wraps a frozen model. Its own parameters produce the hook arguments of one call
(bias_delta, prefix, prompt) and it forwards everything else to the model untouched, so the base
weights are never modified and never receive a gradient. Its file format (metadata, the base
model's fingerprint) is minipeft/io/adapter_file.py.

Dtype: trainable parameters stay fp32 whatever the model's dtype (the optimizer's small steps
survive); the hooks cast them to the model's dtype, and gradients flow back through the cast.
"""

import json

import torch
import torch.nn as nn

from ..checks import check_attention_mask
from ..errors import MiniPeftError
from ..io import safetensors
from ..io.adapter_file import FORMAT_VERSION, check_adapter_metadata, fingerprint


def model_dtype(model):
    """The dtype hook tensors must have to reach `model` (its weights' dtype)."""
    return model.input_embeddings().weight.dtype


def last_token_index(input_ids, attention_mask=None):
    """[B] index of each row's last real token (attention_mask 1), for left or right padding."""
    B, T = input_ids.shape
    if T == 0:
        raise MiniPeftError(f"input_ids is empty (shape {list(input_ids.shape)}); give at least one token per row")
    if attention_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=input_ids.device)
    check_attention_mask("attention_mask", attention_mask, (B, T), every_row_real=True)
    position = torch.arange(T, device=attention_mask.device).expand(B, T)
    return position.masked_fill(~attention_mask.bool(), -1).max(1).values


def class_scores(model, input_ids, attention_mask, label_token_ids, **forward_kwargs):
    """Scores [B, C] of each class's first label token at the next position.

    GPT: the logits after the last real token (left or right padding). T5: the first decoder step.
    `model` is a model or an adapter wrapping one.
    """
    base = model.model if isinstance(model, Adapter) else model
    labels = torch.as_tensor([ids[0] for ids in label_token_ids], device=input_ids.device)
    if base.arch == "t5":
        start = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        logits = model(input_ids, start, attention_mask, **forward_kwargs)[:, 0]
    else:
        last = last_token_index(input_ids, attention_mask)                # [B], checked before the forward
        logits = model(input_ids, attention_mask, **forward_kwargs)      # [B', T, V]
        last = last.repeat(logits.shape[0] // len(last))                  # ensembles repeat the batch
        logits = logits[torch.arange(logits.shape[0], device=last.device), last]
    return logits[:, labels]


def count_parameters(params):
    return sum(p.numel() for p in params)


class Adapter(nn.Module):
    """Base class. Subclasses set `method`, define `settings()` (JSON-able dict), `model_kwargs(batch)` and
    `adapter_state()` / `load_adapter_state()` (the tensors an adapter file holds) and, where the
    tensors meant something else in an older format, `upgrade_loaded(version)`."""

    method = None

    def __init__(self, model):
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)

    # the model's hooks for one call: {"bias_delta": ..., "prefix": ..., "prompt": ...}
    def model_kwargs(self, batch_size):
        raise NotImplementedError

    def forward(self, input_ids, *args, **kwargs):
        """The model's forward (logits, or the loss given labels) with this adapter's hooks."""
        return self.model(input_ids, *args, **self.model_kwargs(input_ids.shape[0]), **kwargs)

    def hidden_states(self, input_ids, *args, **kwargs):
        """The model's final hidden states with this adapter's hooks (for a task head)."""
        return self.model.hidden_states(input_ids, *args, **self.model_kwargs(input_ids.shape[0]), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, *args, **kwargs):
        return self.model.generate(input_ids, *args, **self.model_kwargs(input_ids.shape[0]), **kwargs)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def report(self):
        """'trainable N of M (x%)', M counting the base model's parameters."""
        n, total = count_parameters(self.trainable_parameters()), self.model.num_parameters()
        return f"trainable {n:,} of {total:,} ({100 * n / total:.3f}%)"

    # ---- adapter files -------------------------------------------------------------------------

    def save(self, path):
        """Write the adapter (only its tensors, a few KB to MB) atomically to a safetensors file."""
        base = {k: v for k, v in fingerprint(self.model).items() if k != "sample"}  # the sample serves older files only
        meta = {"minipeft_format": str(FORMAT_VERSION), "method": self.method,
                "config": json.dumps(self.settings(), sort_keys=True), "base": json.dumps(base, sort_keys=True)}
        safetensors.save(path, {k: v.detach() for k, v in self.adapter_state().items()}, metadata=meta)

    @classmethod
    def load(cls, model, path):
        """Rebuild the adapter saved at `path` on `model`; refuses another method or another base model."""
        tensors, meta = safetensors.load(path)
        version = check_adapter_metadata(meta, path, cls.method, model)
        settings = json.loads(meta["config"])
        # every integer setting (n_prompt, n_ensemble, n_prefix, n_classes) is a dimension of a saved
        # tensor: a larger one is damage, refused before the adapter allocates anything for it
        largest = max((d for t in tensors.values() for d in t.shape), default=0)
        for name, value in settings.items():
            if type(value) is int and value > largest:
                raise MiniPeftError(f"{path}: adapter setting {name}={value} is larger than any dimension of the saved "
                                    f"tensors ({largest}); the settings do not belong to these tensors")
        try:
            adapter = cls(model, **settings)
        except (TypeError, ValueError, KeyError, RuntimeError) as e:  # settings written by hand or damaged (sizes torch cannot allocate)
            raise MiniPeftError(f"{path}: adapter settings {str(settings)[:200]} do not fit {cls.__name__} ({e})") from None
        adapter.load_adapter_state(tensors, path)
        adapter.upgrade_loaded(version)
        return adapter

    def upgrade_loaded(self, version):
        """Turn tensors just loaded from a file of format `version` into what this format means by them."""

    def _load_named(self, tensors, expected, path):
        """Copy `tensors` into the parameters/buffers `expected` {name: tensor}, checking names and shapes."""
        if set(tensors) != set(expected):
            missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
            raise MiniPeftError(f"{path}: adapter tensors do not match: missing {missing[:5]}, unexpected {extra[:5]}")
        with torch.no_grad():
            for name, target in expected.items():
                if tensors[name].shape != target.shape:
                    raise MiniPeftError(f"{path}: adapter tensor {name} has shape {list(tensors[name].shape)}; expected {list(target.shape)}")
                target.copy_(tensors[name])


