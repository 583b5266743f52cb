"""The three papers' findings, reproduced on the character-level backbones, each with a verdict.

    python reproduce.py                              # pretrains the three backbones (cached), then this
    python reproduce.py --quick                      # the whole pipeline in seconds (the tests run it)
    python reproduce.py --out results --overwrite    # regenerate the repository's results/

What runs, in order (one progress bar over all of it):
  1. the sweep: for each (task, method), AdamW at a few learning rates, scored on a dev set after
     50, 100 and 150 steps; the best (learning rate, steps) is what every later run of that
     method uses. The sweep is part of the results, not a setting chosen by hand.
  2. the settings (SETTINGS), each with the same seeds: seed s of every setting draws the same
     training examples and batches (training/state.step_seed), so settings compare seed by seed.
  3. the findings (FINDINGS): each is a difference of scores, per seed, that the paper says is
     positive; its 95% interval decides (training/stats.py): reproduced when the interval lies
     above zero, refuted when below, inconclusive when it holds zero.
  4. the report: README.md (tables, verdicts in words, plots), results.json (every run).

The tasks (training/tasks.py): E2E-style table-to-text, scored by minus the validation loss per
character (and BLEU for the methods' headline rows), and two-class sentiment with label words,
scored by accuracy. The findings run on the small backbone (3 x 96) unless they are about scale:
E2E rows are ~250 characters, and five seeds of ~40 settings must fit in an hour on 2 cores.
"""

from .findings import FINDINGS, SETTINGS, Finding, Setting, decide
from .report import RESULT_FILES, write_report
from .runs import backbone_folders, earlier_results, remove_earlier_results, reproduce

__all__ = ["FINDINGS", "SETTINGS", "Finding", "Setting", "decide", "RESULT_FILES", "write_report", "backbone_folders",
           "earlier_results", "remove_earlier_results", "reproduce"]
