"""Running the reproductions: one fine-tune of a setting with a seed (run), one sweep run
(sweep_one), and the whole of it (reproduce), saved after every run so that it resumes."""

import json
import math
import os
import random
import tempfile
import time

import torch
from tqdm import tqdm

from ..errors import MiniPeftError
from ..io.atomic import atomic_write
from ..io.tokenizer import CharTokenizer
from ..methods.adapter import count_parameters
from ..methods.bitfit import PAPER_TERMS, TERMS, BitFit
from ..models.gpt import GPT
from ..models.layers import bias_slots
from ..training import finetune as ft
from ..training.tasks import SENTIMENT_LABELS
from .findings import (BATCH, BLEU_EXAMPLES, DATA_SEEDS, N_TRAIN, REAL_WORDS, SETTINGS, SIZES, SWEEP, SWEEP_LRS,
                       SWEEP_STEPS, sweep_plan)
from .report import RESULT_FILES, write_report

# ---- one run ---------------------------------------------------------------------------------------

def load_backbone(folder):
    """(model, codec) of a train_char.py output folder."""
    tokenizer_path, model_dir = os.path.join(folder, "tokenizer.json"), os.path.join(folder, "model")
    if not (os.path.isfile(tokenizer_path) and os.path.isdir(model_dir)):
        raise MiniPeftError(f"no backbone in {folder}: it needs tokenizer.json and model/ (train_char.py writes them)")
    return GPT.from_pretrained(model_dir), ft.Codec(CharTokenizer.load(tokenizer_path), "gpt")


def build(setting, model, codec, seed):
    """The module to train for a setting (make_method with its options resolved)."""
    options = dict(setting.options)
    init = options.pop("init", None)
    if init == "words":
        options["init_ids"] = codec.encode(REAL_WORDS)
    elif init == "labels":
        options.update(prompt_init="labels", label_ids=[codec.encode(w) for w in SENTIMENT_LABELS])
    if options.pop("random_slots", False):
        paper = sum(getattr(m, attr).numel() for _, m, attr, role in bias_slots(model) if role in PAPER_TERMS)
        options["slots"] = random_slots(model, paper, seed)
    return ft.make_method(setting.method, model, seed=seed, **options)


def random_slots(model, target, seed):
    """Bias slots picked at random until they hold about `target` parameters (BitFit's control)."""
    slots = [(name, getattr(m, attr).numel()) for name, m, attr, _ in bias_slots(model)]
    random.Random(seed).shuffle(slots)
    chosen, n = [], 0
    for name, size in slots:
        if n + size <= target * 1.1:
            chosen.append(name)
            n += size
    return chosen


def score(module, task, data, codec):
    """Higher is better: minus the loss per target character (E2E), or the accuracy (sentiment; for
    a prompt ensemble its mean single-prompt accuracy)."""
    return scores(module, task, data, codec)[0]


def scores(module, task, data, codec):
    """(score, {"single", "voted"} for a prompt ensemble, else {}): one pass over the data."""
    if task == "e2e":
        return -ft.evaluate(module, data, codec), {}
    acc = ft.accuracy(module, data, codec, list(SENTIMENT_LABELS))
    return (acc[0], {"single": acc[0], "voted": acc[1]}) if isinstance(acc, tuple) else (acc, {})


def run(setting, seed, plan, folders, n_eval):
    """Fine-tune one setting with one seed; returns its measurements (JSON-ready)."""
    torch.manual_seed(seed)
    model, codec = load_backbone(folders[setting.backbone])
    module = build(setting, model, codec, seed)
    lr, steps = lr_and_steps(setting, plan)
    train = ft.pairs(setting.task, setting.n_train, 1000 + seed)
    test = ft.pairs(setting.task, n_eval, DATA_SEEDS["test"])
    started, diverged = time.perf_counter(), None
    try:
        curve = ft.finetune(module, train, codec, steps=steps, lr=lr, batch_size=BATCH[setting.task], seed=seed)
    except ft.Diverged as e:                # scored as it stands: the last good state, before the bad step
        curve, diverged = [], str(e)
    out = {"seed": seed, "lr": lr, "steps": steps, "train_seconds": time.perf_counter() - started, "curve": curve}
    out["score"], ensemble = scores(module, setting.task, test, codec)
    out.update(trainable=count_parameters(p for p in module.parameters() if p.requires_grad), total=model.num_parameters())
    if diverged:
        out["diverged"] = diverged
    if setting.bleu:
        out["bleu"] = ft.e2e_scores(module, test[:BLEU_EXAMPLES], codec)["bleu"]
    if seed == 0:                           # the same for every seed
        with tempfile.TemporaryDirectory() as folder:
            out["saved_bytes"] = ft.save_for_task(module, setting.method, folder)
    if isinstance(module, BitFit) and module.terms == TERMS:
        out["bias_change"] = bias_change(module)
    out.update(ensemble)
    out["seconds"] = time.perf_counter() - started
    return out


def lr_and_steps(setting, plan):
    """The swept (learning rate, steps) of a setting: its own method's steps, the rate of lr_of's
    (default: its own) times lr_scale. Frozen: (0, 0), nothing to train."""
    if setting.method == "frozen":
        return 0.0, 0
    lr = plan[f"{setting.task}/{setting.lr_of or setting.method}"]["lr"] * setting.lr_scale
    return lr, plan[f"{setting.task}/{setting.method}"]["steps"]


@torch.no_grad()
def bias_change(module):
    """{term: mean |trained bias - pretrained bias| per element} over the model's slots of that term
    (the BitFit paper's figure, ||b_0 - b_F||_1 / dim(b), pooled per term)."""
    roles = {name: role for name, _, _, role in bias_slots(module.model)}
    total, count = dict.fromkeys(TERMS, 0.0), dict.fromkeys(TERMS, 0)
    for name, delta in module.model_kwargs(1)["bias_delta"].items():
        total[roles[name]] += delta.abs().sum().item()
        count[roles[name]] += delta.numel()
    return {t: total[t] / count[t] for t in TERMS if count[t]}


# ---- the sweep -------------------------------------------------------------------------------------

def swept_setting(task, method):
    """The setting a sweep run trains: the method's headline setting for the task, small backbone."""
    return SETTINGS[method] if task == "e2e" else SETTINGS[f"sentiment {method} small"]


def sweep_one(task, method, lr, folders, steps, n_eval):
    """Dev scores [(steps, score)] of one run at learning rate lr, scored at each of `steps`."""
    torch.manual_seed(0)
    model, codec = load_backbone(folders["small"])
    module = build(swept_setting(task, method), model, codec, 0)
    train = ft.pairs(task, N_TRAIN, 1000)
    dev = ft.pairs(task, n_eval, DATA_SEEDS["dev"])
    scores = []

    def at_checkpoint(step, loss):
        if step + 1 in steps:
            scores.append((step + 1, score(module, task, dev, codec)))
            module.train()

    try:
        ft.finetune(module, train, codec, steps=max(steps), lr=lr, batch_size=BATCH[task], seed=0, on_step=at_checkpoint)
    except ft.Diverged:                     # diverged: this rate scores nothing from there on
        scores += [(s, -math.inf) for s in steps if s not in dict(scores)]
    return scores


# ---- the whole run ---------------------------------------------------------------------------------

QUICK = {"seeds": 2, "sweep_steps": (2, 3), "n_eval": 8}       # --quick: the pipeline, not the findings
FULL = {"seeds": 5, "sweep_steps": SWEEP_STEPS, "n_eval": 200}


def backbone_folders(root):
    """{size: folder} as train_char.py names its outputs: runs/char-small, runs/char, runs/char-large."""
    return {size: os.path.join(root, "char" + ("" if size == "medium" else f"-{size}")) for size in SIZES}


def jobs(config):
    """Every run of the reproduction in order: ("sweep", task, method, lr) then ("setting", name, seed)."""
    lrs = (lambda m: SWEEP_LRS[m][1:2]) if config["quick"] else (lambda m: SWEEP_LRS[m])
    out = [("sweep", task, method, lr) for task, methods in SWEEP.items() for method in methods for lr in lrs(method)]
    return out + [("setting", name, seed) for name in SETTINGS for seed in range(config["seeds"])]


def job_key(job):
    return "/".join(str(part) for part in job[1:])


def reproduce(folders, out, *, quick=False, resume=False, overwrite=False, progress=True):
    """Run (or, with resume, finish) every job, saving results.json after each; then write the report.
    overwrite: remove an earlier run's files from out first (once the backbones are found good).
    Returns the results dict."""
    config = {"quick": quick, **(QUICK if quick else FULL)}
    config["sweep_steps"] = list(config["sweep_steps"])
    path = os.path.join(out, "results.json")
    results = {"config": config, "sweep": {}, "runs": {}, "seconds": 0.0}
    if resume and os.path.isfile(path):
        with open(path) as f:
            results = json.load(f)
        if results.get("config") != config:
            raise MiniPeftError(f"{path} was written with other settings ({results.get('config')}) than this run's "
                                f"({config}): resume it with the same --quick, or write to another --out")
    for size, folder in folders.items():
        load_backbone(folder)                                 # fail now, not after an hour
    if overwrite:
        remove_earlier_results(out)
    every, done = jobs(config), {"sweep": set(results["sweep"]), "setting": _done_runs(results)}
    todo = [j for j in every if job_key(j) not in done[j[0]]]
    os.makedirs(out, exist_ok=True)
    started = time.perf_counter() - results["seconds"]
    with tqdm(total=len(every), initial=len(every) - len(todo), desc="reproduce", disable=not progress,
              dynamic_ncols=True) as bar:
        for job in todo:
            bar.set_postfix_str(job_key(job)[:48])
            if job[0] == "sweep":
                _, task, method, lr = job
                results["sweep"][job_key(job)] = sweep_one(task, method, lr, folders, config["sweep_steps"], config["n_eval"])
            else:
                _, name, seed = job
                plan = sweep_plan(results)
                results["runs"].setdefault(name, []).append(run(SETTINGS[name], seed, plan, folders, config["n_eval"]))
            results["seconds"] = time.perf_counter() - started
            with atomic_write(path, "w") as f:                # a stopped run keeps every finished job
                json.dump(results, f)
            bar.update()
    results.setdefault("machine", {"cpus": os.cpu_count(), "torch": torch.__version__})
    with atomic_write(path, "w") as f:
        json.dump(results, f)
    write_report(results, out)
    return results


def earlier_results(out):
    """The files in out that a reproduction writes (an earlier run's); [] when none."""
    return [f for f in RESULT_FILES if os.path.isfile(os.path.join(out, f))]


def remove_earlier_results(out):
    earlier = earlier_results(out)
    for name in earlier:
        os.remove(os.path.join(out, name))
    if earlier:
        print(f"--overwrite: removed the earlier results from {out} ({', '.join(earlier)})", flush=True)


def _done_runs(results):
    return {f"{name}/{r['seed']}" for name, runs in results["runs"].items() for r in runs}
