"""Checkpoint I/O shared by GPT-2 and T5: Hugging Face-layout folders, without Hugging Face.

A model describes its checkpoint as an explicit key map: a list of `Key(ckpt_name, our_names, how)`
entries, where `how` is "copy", "transpose" (GPT-2's Conv1D weights are stored [in, out]) or
"split" (one fused checkpoint tensor feeding several minipeft slots, e.g. c_attn.bias -> q, k, v).
The same map is used in both directions, so what is saved loads back in minipeft and transformers.
"""

import json
import os
import pickle
import re
from dataclasses import dataclass

import torch

from ..io import safetensors
from .atomic import atomic_write
from ..errors import MiniPeftError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class Key:
    ckpt: str        # name in the checkpoint file
    ours: tuple      # minipeft parameter name(s) it maps to
    how: str = "copy"  # "copy" | "transpose" | "split"


def load_file(path):
    """One weights file -> dict of CPU tensors. `.bin` goes only through torch.load(weights_only=True)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        return safetensors.load(path)[0]
    if not os.path.isfile(path):
        raise MiniPeftError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise MiniPeftError(
            f"{path}: refused to unpickle it: the file holds objects other than tensors, which could run code "
            f"when loaded ({str(e).splitlines()[0][:200]}). Convert it to safetensors from a trusted source.") from None
    except Exception as e:  # zip/EOF/runtime errors of a damaged file
        raise MiniPeftError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise MiniPeftError(f"{path}: expected a dict of name -> tensor, got {type(state).__name__}")
    return state


def load_folder(folder):
    """(config dict, state dict) from a Hugging Face-layout folder: config.json plus one weights file or a sharded index."""
    folder = os.fspath(folder)
    config = read_json(os.path.join(folder, "config.json"))
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return config, load_file(os.path.join(folder, name))
    for name in INDEX_FILES:
        index_path = os.path.join(folder, name)
        if os.path.isfile(index_path):
            weight_map = read_json(index_path).get("weight_map")
            if not isinstance(weight_map, dict):
                raise MiniPeftError(f"{index_path}: missing a 'weight_map' object")
            state = {}
            for shard in sorted(set(weight_map.values())):
                if not isinstance(shard, str) or os.path.basename(shard) != shard:
                    raise MiniPeftError(f"{index_path}: shard name {shard!r} must be a plain file name in the folder")
                state.update(load_file(os.path.join(folder, shard)))
            return config, state
    raise MiniPeftError(f"{folder}: no weights found; expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)}")


def read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise MiniPeftError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MiniPeftError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise MiniPeftError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_json(path, data):
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def count_blocks(state, pattern):
    """How many blocks the checkpoint holds: distinct indices captured by `pattern` (GPT-2's: "h.<i>.")."""
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def check_count(state, pattern, count, field, source):
    """The config's number of blocks (`field` = count) must be the checkpoint's (count_blocks).
    Checked before anything is built, so a config that asks for a million layers is refused, not
    allocated."""
    found = count_blocks(state, pattern)
    if found != count:
        raise MiniPeftError(f"{source}: the config says {field}={count!r}, but the weights hold {found} such blocks")


def load_into(model, state, key_map, *, ignore=(), source="checkpoint"):
    """Copy checkpoint tensors into `model` through `key_map`; every mismatch is a clear error.

    `ignore` holds regexes of checkpoint keys that are not parameters (causal-mask buffers, strays).
    A model built on the meta device (shapes only) gets its memory after every key, dtype and shape
    has been checked: a config that does not match its weights never allocates.
    """
    params = dict(model.named_parameters())
    expected = {k.ckpt for k in key_map}
    unexpected = sorted(k for k in state if k not in expected and not any(re.fullmatch(p, k) for p in ignore))
    if unexpected:
        raise MiniPeftError(f"{source}: unexpected key(s) {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}; "
                            f"the file does not match this architecture")
    missing = [k.ckpt for k in key_map if k.ckpt not in state]
    if missing:
        raise MiniPeftError(f"{source}: missing key(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for key in key_map:
        t = state[key.ckpt]
        if not t.is_floating_point():
            raise MiniPeftError(f"{source}: {key.ckpt} has dtype {t.dtype}; expected a floating-point tensor")
        want = _ckpt_shape(key, [params[name].shape for name in key.ours])
        if tuple(t.shape) != want:
            raise MiniPeftError(f"{source}: {key.ckpt} has shape {list(t.shape)}; expected {list(want)}")
    if any(p.is_meta for p in params.values()):
        unset = sorted(set(params) - {name for key in key_map for name in key.ours})
        assert not unset, f"the key map leaves {unset[:5]} unset"  # every parameter comes from the file
        model.to_empty(device="cpu")
        params = dict(model.named_parameters())
    with torch.no_grad():
        for key in key_map:
            for p, piece in zip([params[name] for name in key.ours], _to_ours(key, state[key.ckpt])):
                p.copy_(piece)


def state_from(model, key_map):
    """The model's parameters as a checkpoint state dict (inverse of load_into)."""
    params = dict(model.named_parameters())
    out = {}
    for key in key_map:
        parts = [params[name].detach() for name in key.ours]
        if key.how == "copy":
            out[key.ckpt] = parts[0].contiguous()
        elif key.how == "transpose":
            out[key.ckpt] = parts[0].t().contiguous()
        else:
            out[key.ckpt] = torch.cat(parts, 0)
    return out


def _ckpt_shape(key, shapes):
    if key.how == "copy":
        return tuple(shapes[0])
    if key.how == "transpose":
        return tuple(reversed(shapes[0]))
    return (sum(s[0] for s in shapes), *shapes[0][1:])


def _to_ours(key, t):
    if key.how == "copy":
        return [t]
    if key.how == "transpose":
        return [t.t()]
    return list(t.chunk(len(key.ours), 0))


FAMILIES = {"gpt2": ("GPT", "GPT-2"), "t5": ("T5", "T5")}  # config.json's model_type -> (minipeft class, family)


def require_model_type(config, path, model_type):
    """Refuse a config.json of another family first (it lacks this family's fields), naming the class that reads it."""
    found = config.get("model_type", model_type)
    if found != model_type:
        cls, family = FAMILIES[model_type]
        known = isinstance(found, str) and found in FAMILIES  # a damaged config may hold any JSON here
        hint = f"; load it with {FAMILIES[found][0]}.from_pretrained" if known else ""
        raise MiniPeftError(f"{path}: model_type is {found!r}; {cls}.from_pretrained reads {family} folders "
                            f"(model_type {model_type!r}){hint}")


def require(config, path, field, kind=int, minimum=1):
    """Fetch config[field], refusing a missing, mistyped or out-of-range value before anything is allocated."""
    if field not in config:
        raise MiniPeftError(f"{path}: config is missing {field!r}")
    value = config[field]
    if kind is int and (type(value) is not int or value < minimum):
        raise MiniPeftError(f"{path}: {field} must be an integer >= {minimum}, got {value!r}")
    if kind is float and (type(value) not in (int, float) or not value >= minimum or value != value):
        raise MiniPeftError(f"{path}: {field} must be a number >= {minimum}, got {value!r}")
    return value
