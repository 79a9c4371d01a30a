"""How every bench script reports a sample: median with its spread and sample count, so a
figure can be read against the machine's noise (2 cores, shared)."""

import statistics


def percentile(values, q):
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values, scale=1000.0, unit="ms", digits=1):
    """'median 295.0 ms (p10-p90 270.1-330.4, n=20)' for seconds given, in `unit`."""
    v = [x * scale for x in values]
    return "median %.*f %s (p10-p90 %.*f-%.*f, n=%d)" % (
        digits, statistics.median(v), unit, digits, percentile(v, 10), digits,
        percentile(v, 90), len(v))


def ratio(values, baseline):
    """Ratio of medians."""
    return statistics.median(values) / statistics.median(baseline)
