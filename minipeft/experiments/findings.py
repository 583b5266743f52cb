"""What the reproductions run and what they decide, as data: the settings (each one fine-tuning
configuration, run with every seed) and the findings (each one claim of a paper, as a difference
of the settings' scores per seed that the paper says is positive)."""

from dataclasses import dataclass, field

from ..methods.bitfit import TERMS
from ..training.stats import mean_ci, verdict

BATCH = {"e2e": 8, "sentiment": 16}          # E2E rows are 3x longer: half the batch, about the same cost per step
N_TRAIN = 500                                # training examples per task unless a setting says otherwise
REAL_WORDS = "describe the restaurant: "     # prefix tuning's real-word init (the paper: "table-to-text:")
DATA_SEEDS = {"test": 1, "dev": 2}           # the fixed evaluation sets; training examples: 1000 + seed
BLEU_EXAMPLES = 100                          # greedy decodes per headline E2E run

# the sweep (runs.sweep_one): one run per (task, method, learning rate) on the small backbone
SWEEP_LRS = {"full": (3e-4, 1e-3, 3e-3, 1e-2), "bitfit": (3e-3, 1e-2, 3e-2, 1e-1), "prefix": (1e-3, 3e-3, 1e-2),
             "prompt": (3e-2, 1e-1, 3e-1, 1.0)}     # --quick: the second of each
SWEEP_STEPS = (50, 100, 150)                 # checkpoints of one run per learning rate (the rate is constant)
SWEEP = {"e2e": ("full", "bitfit", "prefix", "prompt"), "sentiment": ("full", "prompt")}


# ---- the settings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """One fine-tuning configuration. lr_of: whose swept learning rate (default: the method's own),
    times lr_scale. options: make_method's, plus init="words" (prefix real-word init), init="labels"
    (prompt class-label init) and random_slots=True (BitFit's random subset of the paper's size)."""
    method: str
    task: str = "e2e"
    backbone: str = "small"
    n_train: int = N_TRAIN
    lr_of: str = None
    lr_scale: float = 1.0
    options: dict = field(default_factory=dict)
    bleu: bool = False                       # also score BLEU (the headline rows)


def _settings():
    S = {
        # the headline rows: every method on E2E, with BLEU and its cost
        "full": Setting("full", bleu=True),
        "frozen": Setting("frozen", bleu=True),
        "bitfit": Setting("bitfit", bleu=True),
        "prefix": Setting("prefix", bleu=True),
        "prompt": Setting("prompt", bleu=True),
        # BitFit
        "bitfit query+mlp_in": Setting("bitfit", options={"terms": "paper"}),
        "bitfit random subset": Setting("bitfit", options={"random_slots": True}),
        "bitfit at full's lr": Setting("bitfit", lr_of="full"),
        # prefix tuning
        "prefix embedding-only": Setting("prefix", options={"where": "embedding"}),
        "infix": Setting("prefix", options={"where": "infix"}),
        "prefix lr x10": Setting("prefix", lr_scale=10.0),
        "prefix direct": Setting("prefix", options={"reparam": False}),
        "prefix direct lr x10": Setting("prefix", lr_scale=10.0, options={"reparam": False}),
        "prefix real-word init n=50": Setting("prefix", n_train=50, options={"init": "words"}),
    }
    for n in (1, 5, 40):
        S[f"prefix length {n}"] = Setting("prefix", options={"n_prefix": n})
    for n in (50, 200, 2000):
        for method in ("full", "bitfit", "prefix"):
            S[f"{method} n={n}"] = Setting(method, n_train=n)
    # prompt tuning, on sentiment (the paper's tasks are classification); class-label init unless said
    for size in ("small", "medium", "large"):
        S[f"sentiment full {size}"] = Setting("full", "sentiment", size)
        S[f"sentiment prompt {size}"] = Setting("prompt", "sentiment", size, options={"init": "labels"})
    for size in ("small", "large"):
        for init in ("vocab", "random"):
            S[f"sentiment prompt {init} init {size}"] = Setting("prompt", "sentiment", size, options={"prompt_init": init})
    for n in (1, 5, 100):  # sampled-vocabulary init at every length (class-label init needs 2 slots for 2 labels)
        S[f"sentiment prompt length {n}"] = Setting("prompt", "sentiment", options={"prompt_init": "vocab", "n_prompt": n})
    S[ENSEMBLE] = Setting("prompt", "sentiment", options={"prompt_init": "vocab", "n_ensemble": 5})
    return S


ENSEMBLE = "sentiment prompt ensemble of 5"
SETTINGS = _settings()
TRAINING_SIZES = (50, 200, N_TRAIN, 2000)
PREFIX_LENGTHS = (1, 5, 10, 40)              # 10: make_method's default
PROMPT_LENGTHS = (1, 5, 20, 100)             # 20: make_method's default
SIZES = ("small", "medium", "large")



# ---- the findings ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """A claim of a paper as a difference, per seed, that the paper says is positive.

    difference(v) gets v = {setting: that seed's run[measure]} for the finding's settings: by
    default the score (higher is better), so the difference is in the task's score units;
    measure="bias_change" gives {term: change}, measure=None the whole run record."""
    paper: str
    claim: str
    settings: tuple
    difference: object                       # v -> float
    measure: str = "score"


def _gap_closer_to_full(method):
    # (method - frozen) - (full - method): positive when the method lands closer to full than to frozen
    return lambda s: 2 * s[method] - s["frozen"] - s["full"]


def _bias_most(v):
    change = v["bitfit"]
    return min(change["query"], change["mlp_in"]) - max(change[t] for t in TERMS if t not in ("query", "mlp_in"))


FINDINGS = [
    Finding("BitFit", "BitFit lands closer to full fine-tuning than to the frozen model", ("bitfit", "full", "frozen"),
            _gap_closer_to_full("bitfit")),
    Finding("BitFit", "the query + MLP-in biases keep more than half of BitFit's gain over frozen",
            ("bitfit query+mlp_in", "bitfit", "frozen"), lambda s: s["bitfit query+mlp_in"] - (s["bitfit"] + s["frozen"]) / 2),
    Finding("BitFit", "a random subset of biases of the same size does worse than query + MLP-in",
            ("bitfit query+mlp_in", "bitfit random subset"), lambda s: s["bitfit query+mlp_in"] - s["bitfit random subset"]),
    Finding("BitFit", "BitFit wants a larger learning rate than full fine-tuning: its own beats full's",
            ("bitfit", "bitfit at full's lr"), lambda s: s["bitfit"] - s["bitfit at full's lr"]),
    Finding("BitFit", "with 50 examples BitFit beats full fine-tuning", ("bitfit n=50", "full n=50"),
            lambda s: s["bitfit n=50"] - s["full n=50"]),
    Finding("BitFit", "with 2,000 examples full fine-tuning beats BitFit", ("full n=2000", "bitfit n=2000"),
            lambda s: s["full n=2000"] - s["bitfit n=2000"]),
    Finding("BitFit", "the query and MLP-in biases change more than every other term (change per element)",
            ("bitfit",), _bias_most, "bias_change"),
    Finding("BitFit", "the key bias changes least (it gets no gradient: softmax ignores a per-query constant)",
            ("bitfit",), lambda v: min(v["bitfit"][t] for t in TERMS if t != "key") - v["bitfit"]["key"], "bias_change"),
    Finding("Prefix", "prefix tuning lands closer to full fine-tuning than to the frozen model",
            ("prefix", "full", "frozen"), _gap_closer_to_full("prefix")),
    Finding("Prefix", "with 50 examples prefix tuning beats full fine-tuning", ("prefix n=50", "full n=50"),
            lambda s: s["prefix n=50"] - s["full n=50"]),
    Finding("Prefix", "with 200 examples prefix tuning beats full fine-tuning", ("prefix n=200", "full n=200"),
            lambda s: s["prefix n=200"] - s["full n=200"]),
    Finding("Prefix", "a prefix at every layer beats one at the embedding only", ("prefix", "prefix embedding-only"),
            lambda s: s["prefix"] - s["prefix embedding-only"]),
    Finding("Prefix", "a prefix beats an infix (slots just before the answer)", ("prefix", "infix"),
            lambda s: s["prefix"] - s["infix"]),
    Finding("Prefix", "the MLP reparameterisation is more robust: its worse of two learning rates (1x, 10x) beats "
            "the direct prefix's worse", ("prefix", "prefix lr x10", "prefix direct", "prefix direct lr x10"),
            lambda s: min(s["prefix"], s["prefix lr x10"]) - min(s["prefix direct"], s["prefix direct lr x10"])),
    Finding("Prefix", "with 50 examples, real-word init beats random init",
            ("prefix real-word init n=50", "prefix n=50"), lambda s: s["prefix real-word init n=50"] - s["prefix n=50"]),
    Finding("Prefix", "a prefix of 10 beats a prefix of 1", ("prefix", "prefix length 1"),
            lambda s: s["prefix"] - s["prefix length 1"]),
    Finding("Prompt", "the gap to full fine-tuning is smaller on the large backbone than on the small one",
            ("sentiment full small", "sentiment prompt small", "sentiment full large", "sentiment prompt large"),
            lambda s: (s["sentiment full small"] - s["sentiment prompt small"])
            - (s["sentiment full large"] - s["sentiment prompt large"])),
    Finding("Prompt", "a prompt of 20 beats a prompt of 1 (sampled-vocabulary init)",
            ("sentiment prompt vocab init small", "sentiment prompt length 1"),
            lambda s: s["sentiment prompt vocab init small"] - s["sentiment prompt length 1"]),
    Finding("Prompt", "gains flatten past 20: 1 -> 20 gains more than 20 -> 100",
            ("sentiment prompt vocab init small", "sentiment prompt length 1", "sentiment prompt length 100"),
            lambda s: 2 * s["sentiment prompt vocab init small"] - s["sentiment prompt length 1"]
            - s["sentiment prompt length 100"]),
    Finding("Prompt", "class-label init beats sampled-vocabulary init (small backbone)",
            ("sentiment prompt small", "sentiment prompt vocab init small"),
            lambda s: s["sentiment prompt small"] - s["sentiment prompt vocab init small"]),
    Finding("Prompt", "sampled-vocabulary init beats random init (small backbone)",
            ("sentiment prompt vocab init small", "sentiment prompt random init small"),
            lambda s: s["sentiment prompt vocab init small"] - s["sentiment prompt random init small"]),
    Finding("Prompt", "the class-label over random init gap is larger on the small backbone than on the large",
            ("sentiment prompt small", "sentiment prompt random init small", "sentiment prompt large",
             "sentiment prompt random init large"),
            lambda s: (s["sentiment prompt small"] - s["sentiment prompt random init small"])
            - (s["sentiment prompt large"] - s["sentiment prompt random init large"])),
    Finding("Prompt", "an ensemble of 5 prompts in one batch (majority vote) beats its average single prompt",
            (ENSEMBLE,), lambda v: v[ENSEMBLE]["voted"] - v[ENSEMBLE]["single"], None),
]


def per_seed(finding, runs):
    """[{setting: run[measure]}] per seed, for the seeds every one of the finding's settings has run."""
    n = min(len(runs[name]) for name in finding.settings)
    return [{name: runs[name][i] if finding.measure is None else runs[name][i][finding.measure] for name in finding.settings}
            for i in range(n)]


def decide(finding, runs):
    """(mean difference, 95% half-width, verdict) over the seeds."""
    mean, half = mean_ci([finding.difference(v) for v in per_seed(finding, runs)])
    return mean, half, verdict(mean, half, +1)


# ---- the sweep's choice ----------------------------------------------------------------------------

def choose(grid):
    """The (lr, steps) of the best dev score in grid [(lr, steps, score)]; ties: fewer steps, then smaller lr."""
    lr, steps, _ = max(grid, key=lambda g: (g[2], -g[1], -g[0]))
    return {"lr": lr, "steps": steps}


def sweep_plan(results):
    """{"task/method": {"lr", "steps"}}: the best of the sweep for each."""
    grids = {}
    for key, scores in results["sweep"].items():
        task, method, lr = key.split("/")
        grids.setdefault(f"{task}/{method}", []).extend((float(lr), steps, s) for steps, s in scores)
    return {key: choose(grid) for key, grid in grids.items()}
