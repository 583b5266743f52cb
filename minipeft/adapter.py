"""What BitFit, PrefixTuning and PromptTuning share: the wrapper, the report, adapter files.

An adapter wraps a frozen model. Its own parameters produce the hook arguments of one call
(bias_delta, prefix, prompt) and it forwards everything else to the model untouched, so the base
weights are never modified and never receive a gradient.

Adapter file: safetensors with metadata
  minipeft_format  "2"  (format 1: BitFit files held deltas from the base biases, not the biases
                   themselves; prefix and prompt files are the same in both; format 1 still loads)
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
from .layers import check_attention_mask

FORMAT_VERSION = 2


SAMPLE_PER_TENSOR = 8  # values per sampled weight matrix, spread over it
MANTISSA_BITS = {"torch.float32": 23, "torch.float16": 10, "torch.bfloat16": 7}


def fingerprint(model):
    """A base model's identity: family, size, a hash of its parameter shapes, a hash of the first 256
    values of ~8 tensors (as in files of every version), and, to tell the same weights in another
    dtype, the dtype and an exact sample: 8 values spread over each of ~8 weight matrices."""
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    shapes = {name: list(p.shape) for name, p in params.items()}
    for name in sorted(params)[:: max(1, len(params) // 8)]:  # ~8 tensors spread over the model
        h.update(name.encode())
        h.update(params[name].detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    matrices = sorted(n for n, p in params.items() if p.dim() >= 2)  # biases and norms start equal in every model
    sample = []
    for name in matrices[:: max(1, len(matrices) // 8)]:
        flat = params[name].detach().reshape(-1)  # exact integer spacing (a float linspace rounds past the end)
        at = torch.arange(SAMPLE_PER_TENSOR, device=flat.device) * (flat.numel() - 1) // (SAMPLE_PER_TENSOR - 1)
        sample += flat[at].float().tolist()  # exact: every fp32/fp16/bf16 value is a JSON (double) float
    return {"arch": model.arch, "n_parameters": sum(p.numel() for p in params.values()),
            "shapes_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
            "weights_sha256": h.hexdigest()[:16], "dtype": str(next(iter(params.values())).dtype), "sample": sample}


def same_base(saved, current):
    """Whether fingerprint `saved` (from a file: any JSON) and fingerprint `current` name the same base
    model: same arch, size and shapes, and the same weights. In the same dtype: the same hash and
    sample. In another dtype: both samples rounded to the coarser dtype are equal (fp16 vs bf16,
    neither coarser: within one bf16 step, as rounding twice may land one step apart). Files from
    before the sample compare by hash only."""
    if not _same_shapes(saved, current):
        return False
    a, b, dtype = saved.get("sample"), current["sample"], saved.get("dtype")
    if dtype not in MANTISSA_BITS or not isinstance(a, list) or len(a) != len(b) or not all(type(x) is float for x in a):
        return saved.get("weights_sha256") == current["weights_sha256"]  # an older file (or a damaged sample)
    if dtype == current["dtype"]:
        return saved.get("weights_sha256") == current["weights_sha256"] and a == b
    coarse = min(dtype, current["dtype"], key=MANTISSA_BITS.get)
    a, b = (torch.tensor(x).to(getattr(torch, coarse.split(".")[1])).float() for x in (a, b))
    if {dtype, current["dtype"]} == {"torch.float16", "torch.bfloat16"}:
        return bool(((a - b).abs() <= b.abs() * 2 ** -7).all())
    return torch.equal(a, b)


def _same_shapes(saved, current):
    """Same family, size and parameter shapes (`saved` from a file: any JSON)."""
    return isinstance(saved, dict) and all(saved.get(k) == current[k] for k in ("arch", "n_parameters", "shapes_sha256"))


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


def count_parameters(params):
    return sum(p.numel() for p in params)


class Adapter(nn.Module):
    """Base class. Subclasses set `method`, define `settings()` (JSON-able dict), `hooks(batch)` and
    `adapter_state()` / `load_adapter_state()` (the tensors an adapter file holds) and, where the
    tensors meant something else in an older format, `upgrade_loaded(version)`."""

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


def check_adapter_metadata(meta, path, method, model):
    """Refuse a file that is not an adapter of `method` for `model`; returns its format version."""
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
        if _same_shapes(base, current) and "sample" not in base:
            raise MiniPeftError(f"{path}: the adapter was trained on a different base model, or on this one in another dtype "
                                f"(this file comes from an older minipeft, whose fingerprint is over the weights as stored: "
                                f"saved {base}, this model {shown}); load the base model it was trained on, in the dtype "
                                f"it was trained in (e.g. torch.float32)")
        base = {k: v for k, v in base.items() if k != "sample"} if isinstance(base, dict) else base
        raise MiniPeftError(f"{path}: the adapter was trained on a different base model "
                            f"(saved {str(base)[:300]}, this model {shown}); load the base model it was trained on")
    return version
