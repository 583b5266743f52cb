"""The report of a reproduction: README.md with the findings and their verdicts, the tables, and
the PNG plots (with matplotlib, the plot extra), all from results.json's content."""

import math
import os

from ..io.atomic import atomic_write
from .findings import FINDINGS, N_TRAIN, PREFIX_LENGTHS, PROMPT_LENGTHS, SETTINGS, SIZES, TRAINING_SIZES, decide, sweep_plan
from ..training.stats import VERDICTS, mean_ci

RESULT_FILES = ("README.md", "results.json", "loss_curves.png", "training_size.png", "prefix_length.png",
                "prompt_length.png", "backbone_size.png", "bias_change.png")

UNITS = {"e2e": "minus loss per character", "sentiment": "accuracy"}
PAPERS = {"BitFit": "BitFit (Ben Zaken et al., 2022)", "Prefix": "Prefix tuning (Li and Liang, 2021)",
          "Prompt": "Prompt tuning (Lester et al., 2021)"}


def unit(finding):
    if finding.measure == "bias_change":
        return "change per element"
    return "accuracy" if finding.measure is None else UNITS[SETTINGS[finding.settings[0]].task]


def _ci(values, digits=3):
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if math.isfinite(half) else f"{mean:.{digits}f}"


def _size(n_bytes):
    return "-" if not n_bytes else f"{n_bytes / 1024:,.1f} KB" if n_bytes < 1024 ** 2 else f"{n_bytes / 1024 ** 2:,.2f} MB"


def decided(results):
    """[(finding, (mean, half-width, verdict))] for every finding whose settings have all run."""
    runs = results["runs"]
    return [(f, decide(f, runs)) for f in FINDINGS if all(name in runs for name in f.settings)]


def findings_table(decisions):
    lines = ["| paper | finding | difference (mean ± 95% interval) | unit | verdict |", "|---|---|---|---|---|"]
    counts = dict.fromkeys(VERDICTS, 0)
    for f, (mean, half, v) in decisions:
        counts[v] += 1
        interval = f"{mean:+.3f} ± {half:.3f}" if math.isfinite(half) else f"{mean:+.3f} (one seed: no interval)"
        lines.append(f"| {f.paper} | {f.claim} | {interval} | {unit(f)} | **{v}** |")
    summary = ", ".join(f"{n} {v}" for v, n in counts.items())
    return lines, summary


CAVEATS = [
    "What the verdicts do not say:",
    "",
    "- These are character-level models of 0.37M to 1.6M parameters, fine-tuned for at most 150 steps; the papers",
    "  used models of 60M to 11B parameters trained to convergence. A refuted or inconclusive finding here says",
    "  what happens at this scale and budget, not that the paper is wrong.",
    "- The E2E score is the test loss per character; BLEU of greedy decodes (headline rows only) is low at this",
    "  budget for every method, full fine-tuning included.",
    "- The key bias gets no gradient in theory (softmax ignores a per-query constant) and only rounding noise in",
    "  practice (`tests/methods/test_bitfit.py`), but Adam divides each gradient by its own running scale, so",
    "  noise still moves the key bias by up to the learning rate per step: under Adam it need not change least.",
]


def in_plain_words(decisions):
    """Per paper, one line per verdict naming its findings."""
    lines = []
    for paper in dict.fromkeys(f.paper for f, _ in decisions):
        by_verdict = {}
        for f, (_, _, v) in decisions:
            if f.paper == paper:
                by_verdict.setdefault(v, []).append(f.claim)
        lines.append(f"- **{PAPERS[paper]}**")
        lines += [f"  - {verdict} ({len(by_verdict[verdict])}): " + "; ".join(by_verdict[verdict]) + "."
                  for verdict in VERDICTS if verdict in by_verdict]
    return lines


def settings_table(results, names):
    runs = results["runs"]
    lines = ["| setting | backbone | task | examples | lr | steps | trainable | saved per task | score | BLEU |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        if name not in runs:
            continue
        s, rs = SETTINGS[name], runs[name]
        first = rs[0]
        trainable = f"{first['trainable']:,} ({100 * first['trainable'] / first['total']:.2f}%)"
        value = ([-r["score"] for r in rs], "loss ") if s.task == "e2e" else ([100 * r["score"] for r in rs], "")
        bleu = _ci([r["bleu"] for r in rs], 1) if "bleu" in first else ""
        lines.append(f"| {name} | {s.backbone} | {s.task} | {s.n_train} | {first['lr']:g} | {first['steps']} | {trainable} | "
                     f"{_size(first.get('saved_bytes'))} | {value[1]}{_ci(value[0], 3 if s.task == 'e2e' else 1)} | {bleu} |")
    return lines


def _rates(results, key):
    """The learning rates the sweep tried for "task/method"."""
    return [float(k.rsplit("/", 1)[1]) for k in results["sweep"] if k.rsplit("/", 1)[0] == key]


def _machine(results):
    machine = results.get("machine")
    return f" ({machine['cpus']} CPU cores, torch {machine['torch']})" if machine else ""


def write_report(results, out):
    """README.md (and the plots) in out from results."""
    plots = write_plots(results, out)
    config, runs = results["config"], results["runs"]
    decisions = decided(results)
    table, summary = findings_table(decisions)
    plan = sweep_plan(results)
    lines = [
        "# The papers' findings, reproduced at small scale",
        "",
        f"Written by `python reproduce.py{' --quick' if config['quick'] else ''}`: {config['seeds']} seeds per setting, "
        f"{config['n_eval']} test examples per task, {results['seconds'] / 60:.0f} minutes for the sweep and the "
        f"settings after the backbones' pretraining{_machine(results)}.",
        "",
        "**How to read this.** Three character-level GPT-2 backbones (small 3 x 96, medium 4 x 128, large 5 x 160)",
        "were pretrained by `train_char.py` on Python's docstrings mixed with unlabeled restaurant text, so they",
        "know the tasks' language but not the tasks. Each setting fine-tunes one of them with the same seeds;",
        "seed s of every setting sees the same examples in the same order, so two settings are compared seed",
        "by seed. A finding is a difference the paper says is positive; with its 95% interval over the seeds",
        "it is **reproduced** when the whole interval is above zero, **refuted** when it is below, and",
        "**inconclusive** when it holds zero. Scores are higher-is-better: on E2E (table to text) minus the",
        "test loss per character, on sentiment the accuracy (the classes are balanced: always answering the",
        "majority class scores 0.5). Learning rates and steps come from the sweep at the end, per task and method.",
        "",
        f"## The findings ({summary})",
        "",
        *table,
        "",
        "In plain words, per paper:",
        "",
        *in_plain_words(decisions),
        "",
        *CAVEATS,
        "",
        "## Every method on E2E (small backbone, 500 examples)",
        "",
        "Saved per task is what serving the task needs beside the shared backbone: a whole model for full",
        "fine-tuning, the biases for BitFit, the prefix's keys and values for prefix tuning (its MLP, most of",
        "what trains, is dropped after training), the prompt for prompt tuning.",
        "",
        *settings_table(results, ["full", "frozen", "bitfit", "prefix", "prompt"]),
        "",
    ]
    if "bitfit" in runs and "bias_change" in runs["bitfit"][0]:
        lines += ["## BitFit: which biases move", "", "Mean |trained - pretrained| per element of each term, "
                  "over the layers (the paper's figure 1).", "", "| term | change per element |", "|---|---|"]
        lines += [f"| {t} | {_ci([r['bias_change'][t] for r in runs['bitfit']], 5)} |" for t in runs["bitfit"][0]["bias_change"]]
        lines.append("")
    lines += ["## Every setting", "", *settings_table(results, list(SETTINGS)), "",
              "## The sweep", "",
              f"Each (task, method) trained at each learning rate on the small backbone; the dev score (not the test "
              f"set) after {', '.join(map(str, config['sweep_steps']))} steps. The best is used everywhere above "
              f"(the direct prefix, the other backbones and the x10 settings start from it).", "",
              "| task / method | learning rate | " + " | ".join(f"{s} steps" for s in config["sweep_steps"]) + " | chosen |",
              "|---|---|" + "---|" * len(config["sweep_steps"]) + "---|"]
    for key, scores in results["sweep"].items():
        task, method, lr = key.split("/")
        chosen = plan[f"{task}/{method}"]
        mark = f"{chosen['steps']} steps" if float(lr) == chosen["lr"] else ""
        lines.append(f"| {task} / {method} | {float(lr):g} | " + " | ".join(f"{s:.3f}" for _, s in scores) + f" | {mark} |")
    edges = [f"{key} at {plan[key]['lr']:g}" for key in plan if plan[key]["lr"] in (min(_rates(results, key)), max(_rates(results, key)))]
    if edges:
        lines += ["", f"A rate chosen at the edge of its grid ({', '.join(edges)}) may not be the best one; and each "
                  f"rate's dev score is one seed's, so close scores are close calls."]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    with atomic_write(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_plots(results, out):
    """The PNGs the runs so far allow (matplotlib, the plot extra); returns their names."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'minipeft[plot]')")
        return []
    runs, written = results["runs"], []

    def save(fig, name):
        with atomic_write(os.path.join(out, name)) as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(name)

    def scores(name, sign=1.0):
        return [sign * r["score"] for r in runs[name]]

    headline = [n for n in ("full", "bitfit", "prefix", "prompt") if n in runs and runs[n][0]["curve"]]
    if headline:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in headline:
            curve = runs[name][0]["curve"]
            ax.plot([s for s, _ in curve], [v for _, v in curve], label=name)
        ax.set(xlabel="step", ylabel="training loss per character", title="E2E fine-tuning, small backbone (seed 0)")
        ax.legend()
        save(fig, "loss_curves.png")
    sizes = {m: [n for n in TRAINING_SIZES if _sized(m, n) in runs] for m in ("full", "bitfit", "prefix")}
    if any(len(v) > 1 for v in sizes.values()):
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for method, ns in sizes.items():
            ys = [mean_ci(scores(_sized(method, n), -1.0)) for n in ns]
            ax.errorbar(ns, [m for m, _ in ys], yerr=[h if math.isfinite(h) else 0 for _, h in ys], marker="o", capsize=3, label=method)
        if "frozen" in runs:
            ax.axhline(-runs["frozen"][0]["score"], color="gray", linestyle=":", label="frozen")
        ax.set(xscale="log", xlabel="training examples", ylabel="E2E test loss per character (lower is better)",
               title="Score vs training-set size (95% intervals)")
        ax.legend()
        save(fig, "training_size.png")
    for fname, prefix, lengths, default, task_label in (
            ("prefix_length.png", "prefix length", PREFIX_LENGTHS, "prefix", "E2E test loss per character"),
            ("prompt_length.png", "sentiment prompt length", PROMPT_LENGTHS, "sentiment prompt vocab init small",
             "sentiment accuracy")):
        names = [(n, default if n in (10, 20) else f"{prefix} {n}") for n in lengths]
        names = [(n, name) for n, name in names if name in runs]
        if len(names) > 1:
            sign = -1.0 if "E2E" in task_label else 1.0
            ys = [mean_ci(scores(name, sign)) for _, name in names]
            fig, ax = plt.subplots(figsize=(5, 3.5))
            ax.errorbar([n for n, _ in names], [m for m, _ in ys], yerr=[h if math.isfinite(h) else 0 for _, h in ys],
                        marker="o", capsize=3)
            ax.set(xscale="log", xlabel=prefix.replace("sentiment ", ""), ylabel=task_label,
                   title=f"{prefix.replace('sentiment ', '').capitalize()} (95% intervals)")
            save(fig, fname)
    scale = [s for s in SIZES if f"sentiment full {s}" in runs and f"sentiment prompt {s}" in runs]
    if len(scale) > 1:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        params = [runs[f"sentiment full {s}"][0]["total"] for s in scale]
        for method in ("full", "prompt"):
            ys = [mean_ci(scores(f"sentiment {method} {s}")) for s in scale]
            ax.errorbar(params, [m for m, _ in ys], yerr=[h if math.isfinite(h) else 0 for _, h in ys], marker="o",
                        capsize=3, label=method if method == "full" else "prompt tuning")
        ax.set(xscale="log", xlabel="backbone parameters", ylabel="sentiment accuracy",
               title="Prompt tuning vs full fine-tuning by backbone size")
        ax.legend()
        save(fig, "backbone_size.png")
    if "bitfit" in runs and "bias_change" in runs["bitfit"][0]:
        terms = list(runs["bitfit"][0]["bias_change"])
        ys = [mean_ci([r["bias_change"][t] for r in runs["bitfit"]]) for t in terms]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(terms, [m for m, _ in ys], yerr=[h if math.isfinite(h) else 0 for _, h in ys], capsize=3)
        ax.set(ylabel="mean |change| per element", title="BitFit: how far each bias term moved (95% intervals)")
        save(fig, "bias_change.png")
    return written


def _sized(method, n):
    return method if n == N_TRAIN else f"{method} n={n}"
