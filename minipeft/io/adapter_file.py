"""Adapter files: safetensors written by minipeft, with metadata that says what they hold and
which base model they belong to.

  minipeft_format  "2"  (format 1: BitFit files held deltas from the base biases, not the biases
                   themselves; prefix and prompt files are the same in both; format 1 still loads)
  method           "bitfit" | "prefix" | "prompt"
  config           JSON of the method's settings
  base             JSON fingerprint of the base model (architecture, shapes, dtype, hashes over every weight;
                   bf16/fp16: per-tensor statistics too; see fingerprint)

Adapter.save / Adapter.load (methods/adapter.py) write and read them; check_adapter_metadata
refuses another method, another base model or a newer format before anything is allocated.
"""

import copy
import hashlib
import json
import math
import weakref

import numpy as np
import torch

from ..errors import MiniPeftError

FORMAT_VERSION = 2


# ---- the base model's fingerprint ----------------------------------------------------------------
#
# Same dtype: a sha256 over every parameter's bytes (with its name and shape): any change is refused.
# fp32 against bf16/fp16: an fp32 model also hashes its weights as cast to bf16 and to fp16, so
# each side has the hash of the coarser dtype; casting rounds to nearest even on every device,
# so the same weights give the same bytes and any change that survives the rounding is refused.
# bf16 against fp16: neither is the other's cast. Both keep per-tensor statistics in float64 (sum,
# sum of squares, two fixed pseudo-random +-1 projections) and must agree within what rounding the
# same weights to both dtypes can move them (_agree).

CAST_HASHES = {torch.float32: (torch.bfloat16, torch.float16)}  # dtypes a model also hashes its weights in
ROUNDING = {"torch.bfloat16": (2.0 ** -8, 2.0 ** -134),  # relative half-step, half the smallest subnormal step
            "torch.float16": (2.0 ** -11, 2.0 ** -25)}
N_PROJECTIONS, SIGMAS = 2, 8  # a projection's tolerance: 8 sigmas (Hoeffding: misread with probability < 3e-14)
CHUNK = 1 << 16               # statistics are summed in chunks of this many values (a multiple of 64)
SAMPLE_PER_TENSOR = 8         # files written before the full hash kept a sample (8 values of ~8 matrices)
MANTISSA_BITS = {"torch.float32": 23, "torch.float16": 10, "torch.bfloat16": 7}

_fingerprints = weakref.WeakKeyDictionary()  # model -> (its parameters' identities, fingerprint)


def fingerprint(model):
    """A base model's identity: family, size, a hash of its parameter names and shapes, its dtype,
    sha256 hashes over every parameter (see above), bf16/fp16: per-tensor statistics; and, to compare
    files from older versions, their hash of ~8 tensors and their sample (not saved in new files).

    Computed once per model and cached until a parameter is replaced, cast, moved or changed in place
    (torch's version counter; a change made through `p.data`, which torch does not count, is not seen)."""
    params = dict(model.named_parameters())
    state = [(name, p.untyped_storage(), p.storage_offset(), p.shape, p.stride(), p.dtype, p.device, p._version)
             for name, p in params.items()]
    cached = _fingerprints.get(model)
    if cached is not None and len(cached[0]) == len(state) and all(
            c[0] == s[0] and c[1]() is s[1] and c[2:] == s[2:] for c, s in zip(cached[0], state)):
        return copy.deepcopy(cached[1])
    result = _compute_fingerprint(model.arch, params)
    _fingerprints[model] = ([(s[0], weakref.ref(s[1]), *s[2:]) for s in state], result)
    return copy.deepcopy(result)


def _compute_fingerprint(arch, params):
    dtype = next(iter(params.values())).dtype
    shapes = {name: list(p.shape) for name, p in params.items()}
    result = {"arch": arch, "n_parameters": sum(p.numel() for p in params.values()),
              "shapes_sha256": hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16],
              "dtype": str(dtype), **_old_fingerprint(params)}
    result["tensors_sha256"] = _tensors_sha256(params, (dtype, *CAST_HASHES.get(dtype, ())))
    if str(dtype) in ROUNDING:
        result["tensor_stats"] = [_tensor_stats(params[name]) for name in sorted(params)]
    return result


def _tensors_sha256(params, dtypes):
    """{dtype: sha256 over every parameter (name, shape, bytes in that dtype; cast on the CPU), in name order}."""
    hashes = {d: hashlib.sha256() for d in dtypes}
    for name in sorted(params):
        p = params[name].detach().cpu()
        for d, h in hashes.items():
            h.update(f"{name} {list(p.shape)} {d};".encode())
            h.update(p.to(d).reshape(-1).contiguous().view(torch.uint8).numpy())
    return {str(d): h.hexdigest()[:16] for d, h in hashes.items()}


def _tensor_stats(p):
    """[numel, sum, sum of squares, projection 1, projection 2] of one bf16/fp16 tensor, summed in
    float64 (numpy: one thread, no BLAS); a projection is the sum of its values with fixed signs,
    bits of PCG64(k)'s raw stream (stable across numpy versions). Rounded to 9 digits, as a file
    keeps them."""
    flat = p.detach().reshape(-1).cpu()
    bf16 = flat.dtype == torch.bfloat16
    raw = flat.view(torch.int16).numpy() if bf16 else flat.numpy()  # numpy has no bfloat16: take its bits
    streams = [np.random.PCG64(k) for k in range(N_PROJECTIONS)]
    total, squares, projections = 0.0, 0.0, [0.0] * N_PROJECTIONS
    for start in range(0, len(raw), CHUNK):
        x = raw[start:start + CHUNK]
        if bf16:  # a bf16 value is the top half of an fp32 one
            x = (x.astype(np.int32) << 16).view(np.float32)
        x = x.astype(np.float64)
        total, squares = total + float(x.sum()), squares + float(np.einsum("i,i", x, x))
        for k, stream in enumerate(streams):
            bits = np.unpackbits(stream.random_raw(-(-len(x) // 64)).view(np.uint8), bitorder="little")[:len(x)]
            projections[k] += float(np.einsum("i,i", x, bits * 2.0 - 1))  # +x where the bit is 1, -x where 0
    return [flat.numel()] + [float(f"{v:.9g}") for v in (total, squares, *projections)]


def _old_fingerprint(params):
    """What files written before the full hash compared: a hash of the first 256 values of ~8 tensors
    and 8 values spread over each of ~8 weight matrices (kept in memory to read those files; not saved)."""
    h = hashlib.sha256()
    for name in sorted(params)[:: max(1, len(params) // 8)]:  # ~8 tensors spread over the model
        h.update(name.encode())
        h.update(params[name].detach().reshape(-1)[:256].float().cpu().numpy().tobytes())
    matrices = sorted(n for n, p in params.items() if p.dim() >= 2)  # biases and norms start equal in every model
    sample = []
    for name in matrices[:: max(1, len(matrices) // 8)]:
        flat = params[name].detach().reshape(-1)  # exact integer spacing (a float linspace rounds past the end)
        at = torch.arange(SAMPLE_PER_TENSOR, device=flat.device) * (flat.numel() - 1) // (SAMPLE_PER_TENSOR - 1)
        sample += flat[at].float().tolist()  # exact: every fp32/fp16/bf16 value is a JSON (double) float
    return {"weights_sha256": h.hexdigest()[:16], "sample": sample}


def same_base(saved, current):
    """Whether fingerprint `saved` (from a file: any JSON) and fingerprint `current` name the same base
    model: same arch, size and shapes, and the same weights. The same dtype, or fp32 against bf16 or
    fp16: the same hash over every tensor, in the coarser dtype. bf16 against fp16: statistics within
    rounding. Files from before the full hash compare as they did (_same_base_before_full_hash)."""
    if not _same_shapes(saved, current):
        return False
    if "tensors_sha256" not in saved:
        return _same_base_before_full_hash(saved, current)
    hashes, dtype = saved["tensors_sha256"], saved.get("dtype")
    if not isinstance(hashes, dict) or not isinstance(dtype, str):
        return False
    if dtype == current["dtype"] or "torch.float32" in (dtype, current["dtype"]):  # one is the other's cast
        coarse = current["dtype"] if dtype == "torch.float32" else dtype
        want = current["tensors_sha256"].get(coarse)
        return want is not None and hashes.get(coarse) == want
    return _agree(saved.get("tensor_stats"), dtype, current.get("tensor_stats"), current["dtype"])


def _agree(saved, saved_dtype, current, current_dtype):
    """Whether per-tensor statistics of a bf16 and an fp16 model allow them to be one set of weights W
    rounded to each dtype (`saved` from a file: any JSON).

    Each value then differs by at most d_i = u|W_i| + e (u, e: both dtypes' relative half-steps and
    half subnormal steps added), so sums differ by at most u * sum|W| + n * e, with
    sum|W| <= sqrt(n) * ||W||; sums of squares by at most sum d_i (|a_i| + |b_i|); a projection with
    signs independent of the weights, by at most 8 * ||d|| (Hoeffding's inequality) and never more
    than the sum's bound. ||W|| is bounded from either side's sum of squares (the tighter one).
    Weights 0.5% larger, a vector moved by 0.1, noise as large as the tensor's own spread leave these
    bounds; another random init too, but for a chance of ~(0.02)^2 per matrix that both projections
    land within theirs (so a model with a few such matrices is refused)."""
    if saved_dtype not in ROUNDING or current_dtype not in ROUNDING or current is None:
        return False
    if not isinstance(saved, list) or len(saved) != len(current):
        return False
    (us, es), (uc, ec) = ROUNDING[saved_dtype], ROUNDING[current_dtype]
    u, e = us + uc, es + ec
    for a, b in zip(saved, current):
        if not isinstance(a, list) or len(a) != len(b) or a[0] != b[0] or \
                not all(type(v) is float and math.isfinite(v) for v in a[1:] + b[1:]):  # fp16 overflow: refused
            return False
        n = b[0]
        norm = min((math.sqrt(max(a[2], 0.0)) + math.sqrt(n) * es) / (1 - us),
                   (math.sqrt(b[2]) + math.sqrt(n) * ec) / (1 - uc))  # >= ||W||
        total = u * math.sqrt(n) * norm + n * e
        squares = u * (2 + u) * norm ** 2 + (2 + 3 * u) * e * math.sqrt(n) * norm + 2 * n * e * e
        projection = min(total, SIGMAS * (u * norm + math.sqrt(n) * e))
        for x, y, tolerance in zip(a[1:], b[1:], (total, squares) + (projection,) * N_PROJECTIONS):
            if not abs(x - y) <= tolerance + 1e-8 * (abs(x) + abs(y)):  # 9 digits kept
                return False
    return True


def _same_base_before_full_hash(saved, current):
    """Files from older versions: in the same dtype, the hash of ~8 tensors and the sample; in another
    dtype, both samples rounded to the coarser dtype are equal (fp16 vs bf16, neither coarser: within
    one bf16 step, as rounding twice may land one step apart). Files from before the sample compare by
    that hash only. They cannot see a change outside those tensors: save them again."""
    a, b, dtype = saved.get("sample"), current["sample"], saved.get("dtype")
    if not isinstance(dtype, str) or dtype not in MANTISSA_BITS or not isinstance(a, list) or len(a) != len(b) or \
            not all(type(x) is float for x in a):
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
        shown = _summary(current)
        if _same_shapes(base, current) and "sample" not in base and "tensors_sha256" not in base:
            raise MiniPeftError(f"{path}: the adapter was trained on a different base model, or on this one in another dtype "
                                f"(this file comes from an older minipeft, whose fingerprint is over the weights as stored: "
                                f"saved {base}, this model {shown}); load the base model it was trained on, in the dtype "
                                f"it was trained in (e.g. torch.float32)")
        base = _summary(base) if isinstance(base, dict) else base
        raise MiniPeftError(f"{path}: the adapter was trained on a different base model "
                            f"(saved {str(base)[:300]}, this model {shown}); load the base model it was trained on")
    return version


def _summary(fingerprint):
    """A fingerprint without its statistics and sample, for messages."""
    return {k: v for k, v in fingerprint.items() if k not in ("tensor_stats", "sample")}
