"""Read and write peft's on-disk format (adapter_config.json + adapter_model.safetensors).

Covered: GPT-2 prompt tuning, GPT-2 prefix tuning (the baked prefix), T5 prompt tuning. An adapter
trained here runs in peft and one trained in peft runs here, with equal logits on real tokens.
On left-padded batches peft's forward counts the pads as positions: pass positions="plain" to the
adapter to get its numbers (the default, "real", gives each row the positions it has alone).

peft's layout: one tensor "prompt_embeddings". Prompt tuning: [P * n_submodules, d_model] (T5
has 2 submodules, encoder and decoder, but only the first P rows are used, on the encoder input).
Prefix tuning: [P, n_layer * 2 * d_model], i.e. per slot [layer, key|value, head, dim], the same
layout minipeft's PrefixTuning uses; peft loads it as-is in inference mode.
"""

import os

import torch

from ..io import checkpoint, safetensors
from ..errors import MiniPeftError
from .prefix import PrefixTuning
from .prompt import PromptTuning


def model_fields(model):
    """What peft's adapter_config.json records about the base model, as peft fills it in for `model`
    (T5: its encoder's layers and heads; two submodules, encoder and decoder)."""
    (n_layer, n_head, _), = list(model.prefix_sites().values())[:1]
    return {"task_type": "SEQ_2_SEQ_LM" if model.arch == "t5" else "CAUSAL_LM",
            "num_transformer_submodules": 2 if model.arch == "t5" else 1,
            "num_layers": n_layer, "num_attention_heads": n_head, "token_dim": model.input_embeddings().weight.shape[1]}


def save_peft(adapter, folder):
    """Write `adapter` in peft's format into `folder` (atomic writes)."""
    model = adapter.model
    config = {**model_fields(model), "inference_mode": True, "base_model_name_or_path": None, "revision": None}
    d_model, n_sub = config["token_dim"], config["num_transformer_submodules"]
    if isinstance(adapter, PromptTuning):
        if adapter.n_ensemble != 1:
            raise MiniPeftError("peft has no prompt ensembles: save one member (.member(k)) at a time")
        prompt = adapter.prompt[0].detach()
        config.update(peft_type="PROMPT_TUNING", num_virtual_tokens=prompt.shape[0], prompt_tuning_init="RANDOM")
        tensor = prompt.repeat(n_sub, 1)  # T5: peft keeps a copy for the decoder it never uses
    elif isinstance(adapter, PrefixTuning) and adapter.where == "all" and model.arch == "gpt":
        config.update(peft_type="PREFIX_TUNING", num_virtual_tokens=adapter.n_prefix, prefix_projection=False,
                      encoder_hidden_size=d_model)
        tensor = adapter.flat("self").detach()
    else:
        raise MiniPeftError(f"peft's format covers GPT-2 prompt and prefix tuning and T5 prompt tuning; "
                            f"not {adapter.method} (where={getattr(adapter, 'where', '-')}) on {model.arch}")
    os.makedirs(folder, exist_ok=True)
    safetensors.save(os.path.join(folder, "adapter_model.safetensors"), {"prompt_embeddings": tensor.cpu()}, {"format": "pt"})
    checkpoint.write_json(os.path.join(folder, "adapter_config.json"), config)


def load_peft(model, folder):
    """An adapter on `model` from a peft adapter folder (prompt or prefix tuning, see above)."""
    folder = os.fspath(folder)
    cfg_path = os.path.join(folder, "adapter_config.json")
    cfg = checkpoint.read_json(cfg_path)
    check_model_fields(cfg, cfg_path, model)
    kind = cfg.get("peft_type")
    weights = next((os.path.join(folder, f) for f in ("adapter_model.safetensors", "adapter_model.bin")
                    if os.path.isfile(os.path.join(folder, f))), None)
    if weights is None:
        raise MiniPeftError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")
    state = checkpoint.load_file(weights)
    if "prompt_embeddings" not in state:
        raise MiniPeftError(f"{weights}: no 'prompt_embeddings' tensor (keys: {sorted(state)[:5]})")
    table = state["prompt_embeddings"].float()
    P = checkpoint.require(cfg, cfg_path, "num_virtual_tokens")
    d_model = model.input_embeddings().weight.shape[1]
    device = model.input_embeddings().weight.device
    if kind == "PROMPT_TUNING":
        if table.dim() != 2 or table.shape[0] < P or table.shape[1] != d_model:
            raise MiniPeftError(f"{weights}: prompt_embeddings has shape {list(table.shape)}; expected [{P} x submodules, {d_model}]")
        adapter = PromptTuning(model, P)
        with torch.no_grad():
            adapter.prompt.copy_(table[:P][None].to(device))  # encoder rows first, as peft uses them
        return adapter
    if kind == "PREFIX_TUNING" and model.arch == "gpt":
        (L, H, D), = model.prefix_sites().values()
        want = [P, L * 2 * H * D]  # checked before the adapter allocates [P, width]
        if list(table.shape) != want:
            raise MiniPeftError(f"{weights}: prompt_embeddings has shape {list(table.shape)}; expected {want} "
                                f"(a prefix_projection adapter must be saved by peft, which saves the projected prefix)")
        adapter = PrefixTuning(model, P, reparam=False)
        with torch.no_grad():
            adapter.prefix["self"].copy_(table.to(device))
        return adapter
    raise MiniPeftError(f"{cfg_path}: peft_type {kind!r} on {model.arch} is not one minipeft reads "
                        f"(PROMPT_TUNING on GPT-2/T5, PREFIX_TUNING on GPT-2)")


def check_model_fields(cfg, cfg_path, model):
    """Refuse a peft config made for another model: task type, submodules, layers, heads, width.

    peft writes all five in every adapter_config.json it saves; a field absent (or null) in a
    hand-written config is not checked, and the tensor's shape is still checked against the model."""
    wrong = [f"{field} {cfg[field]!r:.60} (this model: {want!r})" for field, want in model_fields(model).items()
             if cfg.get(field) is not None and (type(cfg[field]) is not type(want) or cfg[field] != want)]
    if wrong:
        name = "T5" if model.arch == "t5" else "GPT-2"
        hint = " (peft's CAUSAL_LM adapters are for GPT-2, SEQ_2_SEQ_LM ones for T5)" if wrong[0].startswith("task_type") else ""
        raise MiniPeftError(f"{cfg_path}: the adapter was made for another model than this {name}: {', '.join(wrong)}; "
                            f"load it onto the model it was trained on{hint}")
