"""What BitFit, PrefixTuning and PromptTuning share: the wrapper, the report, adapter files.

An adapter wraps a frozen model. Its own parameters produce the hook arguments of one call
(bias_delta, prefix, prompt) and it forwards everything else to the model untouched, so the base
weights are never modified and never receive a gradient.

Adapter file: safetensors with metadata
  minipeft_format  "1"
  method           "bitfit" | "prefix" | "prompt"
  config           JSON of the method's settings
  base             JSON fingerprint of the base model (architecture, shapes, hash and sample of a few weights)

Dtype: trainable parameters stay fp32 whatever the model's dtype (the optimizer's small steps
survive); the hooks cast them to the model's dtype, and gradients flow back through the cast.
"""

import hashlib
import json

import torch
import torch.nn as nn

from . import safetensors
from .errors import MiniPeftError

FORMAT_VERSION = 1


SAMPLE_PER_TENSOR = 8  # values per fingerprinted tensor, spread over it
SAMPLE_RTOL = 1e-2     # covers bf16 rounding (<= 2**-8 relative) and fp16's; random other weights are far off


def fingerprint(model):
    """A base model's identity: family, size, a hash of its parameter shapes, a hash of the first 256
    values of ~8 tensors (exact: same weights in the same dtype), and a sample of 8 values spread over
    each of those tensors, rounded to 4 significant digits (the same weights in another dtype)."""
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    shapes = {name: list(p.shape) for name, p in params.items()}
    sample = []
    for name in sorted(params)[:: max(1, len(params) // 8)]:  # ~8 tensors spread over the model
        flat = params[name].detach().reshape(-1)
        h.update(name.encode())
        h.update(flat[:256].float().cpu().numpy().tobytes())  # unchanged: older files compare by this hash
        if flat.numel():  # exact integer spacing (a float linspace rounds past the end of a 38M-value tensor)
            at = torch.arange(SAMPLE_PER_TENSOR, device=flat.device) * (flat.numel() - 1) // (SAMPLE_PER_TENSOR - 1)
            sample += [float(f"{v:.4g}") for v in flat[at].float().tolist()]
    return {"arch": model.arch, "n_parameters": sum(p.numel() for p in params.values()),
            "shapes_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
            "weights_sha256": h.hexdigest()[:16], "sample": sample}


def same_base(saved, current):
    """Whether fingerprint `saved` (from a file: any JSON) and fingerprint `current` name the same base
    model: same arch, size and shapes, and either the same weights hash or (the same weights in
    another dtype) samples within SAMPLE_RTOL. Files from before the sample compare by hash only."""
    if not isinstance(saved, dict) or any(saved.get(k) != current[k] for k in ("arch", "n_parameters", "shapes_sha256")):
        return False
    if saved.get("weights_sha256") == current["weights_sha256"]:
        return True
    a, b = saved.get("sample"), current.get("sample")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or not all(type(x) is float for x in a):
        return False  # (a file's sample is JSON floats: a huge JSON int would overflow the comparison)
    return all(abs(x - y) <= SAMPLE_RTOL * abs(y) + 1e-6 for x, y in zip(a, b))  # atol: fp16's tiny values


def model_dtype(model):
    """The dtype hook tensors must have to reach `model` (its weights' dtype)."""
    return model.input_embeddings().weight.dtype


def last_token_index(input_ids, attention_mask=None):
    """[B] index of each row's last real token (attention_mask 1), for left or right padding."""
    B, T = input_ids.shape
    if attention_mask is None:
        return torch.full((B,), T - 1, dtype=torch.long, device=input_ids.device)
    if tuple(attention_mask.shape) != (B, T):
        raise MiniPeftError(f"attention_mask must have the shape of input_ids {[B, T]}; got {list(attention_mask.shape)}")
    position = torch.arange(T, device=attention_mask.device).expand(B, T)
    last = position.masked_fill(~attention_mask.bool(), -1).max(1).values  # -1: a row without real tokens
    if bool((last < 0).any()):
        raise MiniPeftError(f"attention_mask rows {(last < 0).nonzero()[:, 0].tolist()[:5]} have no real token (all 0); "
                            f"every row needs at least one 1")
    return last


def count_parameters(params):
    return sum(p.numel() for p in params)


class Adapter(nn.Module):
    """Base class. Subclasses set `method`, define `settings()` (JSON-able dict), `hooks(batch)` and
    `adapter_state()` / `load_adapter_state()` (the tensors an adapter file holds)."""

    method = None

    def __init__(self, model):
        super().__init__()
        self.model = model
        for p in model.parameters():
            p.requires_grad_(False)

    # the model's hooks for one call: {"bias_delta": ..., "prefix": ..., "prompt": ...}
    def hooks(self, batch_size):
        raise NotImplementedError

    def forward(self, input_ids, *args, **kwargs):
        return self.model(input_ids, *args, **self.hooks(input_ids.shape[0]), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids, *args, **kwargs):
        return self.model.generate(input_ids, *args, **self.hooks(input_ids.shape[0]), **kwargs)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    def report(self):
        """'trainable N of M (x%)', M counting the base model's parameters."""
        n, total = count_parameters(self.trainable_parameters()), self.model.num_parameters()
        return f"trainable {n:,} of {total:,} ({100 * n / total:.3f}%)"

    # ---- adapter files -------------------------------------------------------------------------

    def save(self, path):
        """Write the adapter (only its tensors, a few KB to MB) atomically to a safetensors file."""
        meta = {"minipeft_format": str(FORMAT_VERSION), "method": self.method,
                "config": json.dumps(self.settings(), sort_keys=True), "base": json.dumps(fingerprint(self.model), sort_keys=True)}
        safetensors.save(path, {k: v.detach() for k, v in self.adapter_state().items()}, metadata=meta)

    @classmethod
    def load(cls, model, path):
        """Rebuild the adapter saved at `path` on `model`; refuses another method or another base model."""
        tensors, meta = safetensors.load(path)
        check_adapter_metadata(meta, path, cls.method, model)
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
        return adapter

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


def check_adapter_metadata(meta, path, method, model):
    if "minipeft_format" not in meta or "method" not in meta:
        raise MiniPeftError(f"{path}: not a minipeft adapter file (no minipeft_format/method metadata)")
    try:
        version = int(meta["minipeft_format"])
        config, base = json.loads(meta.get("config", "{}")), json.loads(meta.get("base", "{}"))
    except (ValueError, TypeError, RecursionError) as e:
        raise MiniPeftError(f"{path}: damaged adapter metadata ({e})") from None
    if not isinstance(config, dict):
        raise MiniPeftError(f"{path}: adapter config must be a JSON object, got {str(config)[:100]}")
    if version > FORMAT_VERSION:
        raise MiniPeftError(f"{path}: adapter format {version} is newer than this minipeft reads ({FORMAT_VERSION}); upgrade minipeft")
    if meta["method"] != method:
        raise MiniPeftError(f"{path}: this is a {meta['method']!r} adapter; load it with that method, not {method!r}")
    current = fingerprint(model)
    if not same_base(base, current):
        shown = {k: v for k, v in current.items() if k != "sample"}
        if isinstance(base, dict) and "sample" not in base and \
                all(base.get(k) == current[k] for k in ("arch", "n_parameters", "shapes_sha256")):
            raise MiniPeftError(f"{path}: the adapter was trained on a different base model, or on this one in another dtype "
                                f"(this file comes from an older minipeft, whose fingerprint is over the weights as stored: "
                                f"saved {base}, this model {shown}); load the base model it was trained on, in the dtype "
                                f"it was trained in (e.g. torch.float32)")
        base = {k: v for k, v in base.items() if k != "sample"} if isinstance(base, dict) else base
        raise MiniPeftError(f"{path}: the adapter was trained on a different base model "
                            f"(saved {str(base)[:300]}, this model {shown}); load the base model it was trained on")
