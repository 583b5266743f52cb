"""The three papers' findings, reproduced at tiny scale on the character-level backbone.

    python train_char.py                    # once: pretrains runs/char (a few minutes)
    python -m minipeft.experiments          # ~30-40 minutes on 2 CPU cores; --quick for a smoke run
    python -m minipeft.experiments --out results --overwrite   # regenerate the repository's results/

Task: a mixture of the generated table-to-text (E2E-style) and sentiment data, so one fine-tune
gives both a generation loss (E2E validation) and a classification accuracy (label words
"positive"/"negative"). Each setting runs with several seeds; the report gives mean ± std.
Writes results.md, results.json and PNG plots (with matplotlib: pip install 'minipeft[plot]') to
--out, runs/experiments by default, after every setting. An --out that already holds results is
refused unless --overwrite, which removes them when the first new setting is saved.
"""

import argparse
import json
import os
import random
import statistics

import torch

from .training import finetune as ft
from .methods.adapter import count_parameters
from .io.atomic import atomic_write
from .errors import MiniPeftError
from .models.gpt import GPT
from .models.layers import bias_slots
from .training.tasks import SENTIMENT_LABELS
from .io.tokenizer import CharTokenizer

RESULT_FILES = ("results.json", "results.md", "loss_curves.png", "prompt_length.png", "training_size.png")


def run(backbone, codec, method, *, seed, steps, lr, n_train=1000, n_val=300, **options):
    """One fine-tune from the backbone; returns its measurements."""
    torch.manual_seed(seed)
    model = GPT.from_pretrained(os.path.join(backbone, "model"))
    # training examples drawn per seed, the same validation sets for every seed
    train, e2e_val, sent_val = ft.task_data(n_train, n_val, seeds=(100 + seed, 200 + seed, 1, 2))
    random.Random(seed).shuffle(train)
    if options.pop("init_words", False):  # real-word init: the task's own vocabulary
        options["init_ids"] = codec.encode("name food area positive negative")
    if options.get("prompt_init") == "labels":
        options["label_ids"] = [codec.encode(w) for w in SENTIMENT_LABELS]
    module = ft.make_method(method, model, seed=seed, **options)
    curve = ft.finetune(module, train, codec, steps=steps, lr=lr, seed=seed)
    acc = ft.accuracy(module, sent_val, codec, list(SENTIMENT_LABELS))
    out = {"method": method, "seed": seed, "lr": lr, "n_train": n_train, "curve": curve,
           "trainable": count_parameters(p for p in module.parameters() if p.requires_grad), "e2e_loss": ft.evaluate(module, e2e_val, codec)}
    if isinstance(acc, tuple):
        out["accuracy"], out["ensemble_accuracy"] = acc
    else:
        out["accuracy"] = acc
    return out


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


def settings(quick):
    """{experiment: [(label, method, options)]}."""
    return {
        "bitfit": [("full fine-tuning", "full", {}), ("frozen", "frozen", {}), ("BitFit, all biases", "bitfit", {}),
                   ("BitFit, query + mlp_in", "bitfit", {"terms": "paper"}), ("BitFit, random subset (same size)", "bitfit", {"random": True})],
        "bitfit_lr": [(f"BitFit lr {lr:g}", "bitfit", {"lr": lr}) for lr in (1e-3, 1e-2, 5e-2)]
                     + [(f"full lr {lr:g}", "full", {"lr": lr}) for lr in (1e-4, 1e-3)],
        "bitfit_size": [(f"{m} n={n}", m, {"n_train": n}) for n in ((50, 400) if quick else (50, 400, 1600)) for m in ("bitfit", "full")],
        "prefix": [("prefix, all layers", "prefix", {}), ("prefix, embedding only", "prefix", {"where": "embedding"}),
                   ("infix, all layers", "prefix", {"where": "infix"})],
        "prefix_reparam": [(f"prefix {'MLP' if r else 'direct'} lr {lr:g}", "prefix", {"reparam": r, "lr": lr})
                           for r in (True, False) for lr in (3e-3, 3e-2)],
        "prefix_init": [(f"prefix {name}, 100 examples", "prefix", {"n_train": 50, "init_words": w}) for name, w in (("random init", False), ("real-word init", True))],
        "prompt_init": [(f"prompt init {i}", "prompt", {"prompt_init": i}) for i in ("random", "vocab", "labels")],
        "prompt_length": [(f"prompt length {n}", "prompt", {"n_prompt": n, "prompt_init": "labels" if n >= 2 else "vocab"})
                          for n in (1, 5, 20, 100)],
        "prompt_ensemble": [("5 prompts, one batch", "prompt", {"n_ensemble": 5, "prompt_init": "vocab"})],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="runs/char", help="train_char.py's output folder (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per setting (default: %(default)s)")
    p.add_argument("--steps", type=int, default=150, help="fine-tuning steps per run (default: %(default)s)")
    p.add_argument("--only", default=None, help="comma-separated experiments to run (default: all)")
    p.add_argument("--out", default="runs/experiments", help="folder for results.md, results.json and plots (default: "
                   "%(default)s; the repository's results/ are regenerated with --out results --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace the results already in --out (without it, such an "
                   "--out is refused)")
    p.add_argument("--eval-examples", type=int, default=300, help="validation examples per task (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 seed, 3 steps, 20 validation examples")
    args = p.parse_args(argv)
    for name in ("seeds", "steps", "eval_examples"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    known = settings(args.quick)
    unknown = [x for x in (args.only or "").split(",") if x and x not in known]
    if unknown:
        p.error(f"--only: unknown experiment {', '.join(unknown)}; choose from {', '.join(known)}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        p.error(f"--out {args.out} is a file; give a folder")
    earlier = earlier_results(args.out)
    if earlier and not args.overwrite:
        p.error(f"--out {args.out} already holds results ({', '.join(earlier)}): write these to another --out, "
                "or pass --overwrite to replace them")
    try:
        tokenizer_path = os.path.join(args.backbone, "tokenizer.json")
        if not os.path.isfile(tokenizer_path):
            raise MiniPeftError(f"no backbone in {args.backbone}: run `python train_char.py` first (or pass --backbone)")
        codec = ft.Codec(CharTokenizer.load(tokenizer_path), "gpt")
        seeds, steps, n_val = (1, 3, 20) if args.quick else (args.seeds, args.steps, args.eval_examples)
        chosen = {k: v for k, v in known.items() if not args.only or k in args.only.split(",")}
        results = {}
        for name, rows in chosen.items():
            results[name] = []
            for label, method, options in rows:
                options = dict(options)
                lr = options.pop("lr", ft.LEARNING_RATES.get(method, 0.0))
                n_train = options.pop("n_train", 1000)
                runs = []
                for seed in range(seeds):
                    opts = dict(options)
                    if opts.pop("random", False):
                        base = GPT.from_pretrained(os.path.join(args.backbone, "model"))
                        paper = sum(getattr(m, a).numel() for _, m, a, role in bias_slots(base) if role in ("query", "mlp_in"))
                        opts["slots"] = random_slots(base, paper, seed)
                    runs.append(run(args.backbone, codec, method, seed=seed, steps=steps, lr=lr, n_train=n_train, n_val=n_val, **opts))
                results[name].append({"label": label, "options": options, "runs": runs})
                print(f"{name:16s} {label:36s} {_summary(runs)}", flush=True)
                if earlier:  # --overwrite: the earlier results go once this run has something to put in their place
                    remove_earlier_results(args.out)
                    earlier = []
                save(results, args.out)  # after every setting: a long run that is stopped keeps what it measured
    except MiniPeftError as e:
        p.exit(2, f"error: {e}\n")
    plots = plot(results, args.out)
    print(f"results written to {args.out}{os.sep}: " + ", ".join(["results.md", "results.json", *plots]))


def earlier_results(out):
    """The result files of an earlier run in the folder out (those this module writes); [] when none."""
    return [f for f in RESULT_FILES if os.path.isfile(os.path.join(out, f))]


def remove_earlier_results(out):
    earlier = earlier_results(out)
    for name in earlier:
        os.remove(os.path.join(out, name))
    print(f"--overwrite: removed the earlier results from {out} ({', '.join(earlier)})", flush=True)


def save(results, out):
    os.makedirs(out, exist_ok=True)
    with atomic_write(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    with atomic_write(os.path.join(out, "results.md"), "w") as f:
        f.write(report(results))


def _stat(values):
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def _summary(runs):
    s = f"E2E loss {_stat([r['e2e_loss'] for r in runs])}  accuracy {_stat([r['accuracy'] for r in runs])}"
    if "ensemble_accuracy" in runs[0]:
        s += f"  ensemble {_stat([r['ensemble_accuracy'] for r in runs])}"
    return s


def report(results):
    lines = []
    for name, rows in results.items():
        lines += [f"### {name}", "", "| setting | trainable | E2E val loss | sentiment accuracy |", "|---|---|---|---|"]
        for row in rows:
            runs = row["runs"]
            acc = _stat([r["accuracy"] for r in runs])
            if "ensemble_accuracy" in runs[0]:
                acc += f" (single); {_stat([r['ensemble_accuracy'] for r in runs])} (majority vote)"
            lines.append(f"| {row['label']} | {runs[0]['trainable']:,} | {_stat([r['e2e_loss'] for r in runs])} | {acc} |")
        lines.append("")
    return "\n".join(lines)


def plot(results, out):
    """The PNG plots of what results hold, written to out; returns their file names."""
    written = []
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'minipeft[plot]')")
        return written
    # loss curves per method: the BitFit comparison (full, frozen, BitFit variants), else one row per experiment
    rows = results["bitfit"] if "bitfit" in results else [r for name in results for r in results[name][:1]]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in rows:
            curve = row["runs"][0]["curve"]
            if curve:
                ax.plot([s for s, _ in curve], [v for _, v in curve], label=row["label"])
        ax.set(xlabel="step", ylabel="training loss", title="Loss curves (seed 0)")
        ax.legend(fontsize=7)
        _save_png(fig, os.path.join(out, "loss_curves.png"))
        written.append("loss_curves.png")
    if "prompt_length" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [row["options"]["n_prompt"] for row in results["prompt_length"]]
        ys = [statistics.mean(r["accuracy"] for r in row["runs"]) for row in results["prompt_length"]]
        ax.plot(xs, ys, "o-")
        ax.set(xscale="log", xlabel="prompt length", ylabel="sentiment accuracy", title="Prompt tuning: accuracy vs length")
        _save_png(fig, os.path.join(out, "prompt_length.png"))
        written.append("prompt_length.png")
    if "bitfit_size" in results:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in ("bitfit", "full"):
            rows = [r for r in results["bitfit_size"] if r["runs"][0]["method"] == method]
            ax.plot([r["runs"][0]["n_train"] for r in rows], [statistics.mean(x["accuracy"] for x in r["runs"]) for r in rows], "o-", label=method)
        ax.set(xscale="log", xlabel="training examples per task", ylabel="sentiment accuracy", title="Accuracy vs training-set size")
        ax.legend()
        _save_png(fig, os.path.join(out, "training_size.png"))
        written.append("training_size.png")
    return written


def _save_png(fig, path):
    """Write the figure atomically (a plot from an earlier run stays whole until the new one is written)."""
    import matplotlib.pyplot as plt
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
