"""How the reproductions decide: a mean with its 95% confidence interval, and a verdict per finding.

Each setting runs with several seeds; seed s of two settings sees the same training examples in
the same order, so a comparison is made seed by seed (paired): d_s = score_A(s) - score_B(s), or
any other per-seed difference a finding defines (minipeft/experiments/findings.py).
Its 95% interval is mean(d) +- t * sd(d) / sqrt(n), t the 97.5% quantile of Student's t with
n - 1 degrees of freedom. A finding is
    reproduced     when the interval lies wholly on the side the paper says,
    refuted        when it lies wholly on the other side,
    inconclusive   when it contains zero (these seeds cannot tell).
"""

import math
import statistics

# 97.5% quantiles of Student's t by degrees of freedom (df > 30: the normal's 1.96 is within 2%)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
         20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048,
         29: 2.045, 30: 2.042}


def mean_ci(values):
    """(mean, half-width of its 95% interval); the half-width is inf for a single value."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.inf
    return mean, T_975.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)


VERDICTS = ("reproduced", "refuted", "inconclusive")


def verdict(mean, half_width, expect):
    """expect: +1 when the paper says the difference is positive, -1 when negative."""
    low, high = mean - half_width, mean + half_width
    if low > 0 or high < 0:
        return "reproduced" if (low > 0) == (expect > 0) else "refuted"
    return "inconclusive"
