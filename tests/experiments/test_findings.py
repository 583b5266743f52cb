"""The reproductions' settings and findings (minipeft/experiments/findings.py): every finding reads
settings that exist, is decided seed by seed with Student's t interval, and the sweep's choice is
the best dev score."""

import math
import statistics

import pytest

from minipeft.experiments import findings as fx
from minipeft.training.stats import T_975


def test_every_finding_names_settings_that_exist():
    for finding in fx.FINDINGS:
        assert finding.settings and all(name in fx.SETTINGS for name in finding.settings), finding.claim


@pytest.mark.parametrize("bitfit, verdict", [((-1.0, -1.1, -1.05), "reproduced"),     # d = 0.9, 0.8, 0.85
                                             ((-1.6, -1.7, -1.65), "refuted"),        # d = -0.3, -0.4, -0.35
                                             ((-1.0, -1.7, -1.4), "inconclusive")])   # d = 0.9, -0.4, 0.15
def test_a_finding_is_decided_seed_by_seed_with_the_t_interval(bitfit, verdict):
    finding = fx.FINDINGS[0]                                      # 2 * bitfit - frozen - full > 0
    full = (-0.9, -1.0, -0.95)
    runs = {"bitfit": [{"score": b} for b in bitfit], "full": [{"score": f} for f in full], "frozen": [{"score": -2.0}] * 3}
    diffs = [2 * b + 2.0 - f for b, f in zip(bitfit, full)]
    mean, half, got = fx.decide(finding, runs)
    assert mean == pytest.approx(statistics.fmean(diffs))
    assert half == pytest.approx(T_975[2] * statistics.stdev(diffs) / math.sqrt(3))
    assert got == verdict


def test_the_sweep_picks_the_best_dev_score_and_breaks_ties_towards_less():
    grid = [(1e-3, 50, 0.7), (1e-3, 100, 0.8), (1e-2, 50, 0.8), (1e-2, 100, 0.6), (3e-2, 50, -math.inf)]
    assert fx.choose(grid) == {"lr": 1e-2, "steps": 50}            # 0.8 twice: fewer steps wins
    assert fx.choose([(1e-3, 50, 0.8), (1e-2, 50, 0.8)]) == {"lr": 1e-3, "steps": 50}
