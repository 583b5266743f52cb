"""The reproductions' statistics: intervals computed by hand, and the three verdicts."""

import math

import pytest

from minipeft.training.stats import T_975, mean_ci, verdict


def test_mean_ci_by_hand():
    # values 1, 2, 3, 4, 5: mean 3, sample sd sqrt(2.5), t(4) = 2.776
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert mean_ci([7.0]) == (7.0, math.inf)


def test_t_quantiles_fall_towards_the_normal():
    values = [T_975[df] for df in sorted(T_975)]
    assert values == sorted(values, reverse=True) and 1.96 < values[-1] < 2.05


@pytest.mark.parametrize("mean, half, expect, want", [
    (0.5, 0.2, +1, "reproduced"), (-0.5, 0.2, -1, "reproduced"),
    (0.5, 0.2, -1, "refuted"), (-0.5, 0.2, +1, "refuted"),
    (0.1, 0.2, +1, "inconclusive"), (0.0, math.inf, -1, "inconclusive")])
def test_verdicts(mean, half, expect, want):
    assert verdict(mean, half, expect) == want
