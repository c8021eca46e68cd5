"""What the benchmarks share: timing one compiled call."""

import statistics
import time

import jax


def median_ms(fn, args, repeats):
    """Median of `repeats` timed calls of fn(*args), in ms, after a warm-up call."""
    jax.block_until_ready(fn(*args))  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)
