"""Time and peak memory of each gap metric at N = 1k, 10k, 100k samples per domain (d = 512),
beside a naive numpy implementation where one fits in memory.

    python benchmarks/gap_scale.py [--sizes 1000 10000 100000] [--dim 512] [--block-mmd-max 10000]

Each (metric, N) runs in a fresh subprocess so its peak resident memory
(ru_maxrss) is its own; memory is reported above the process's footprint after
the features are generated. Ratios compare domadapt with the naive numpy version
measured in the same run. Block-wise MMD is O(N^2 d) in time (minutes at N = 100k on a 2-core CPU, seconds on a
GPU) but O(block^2) in memory; the linear-time estimator is O(N d).
Writes benchmarks/results/gap_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def naive_mmd(source, target):
    import numpy as np

    pooled = np.concatenate([source, target]).astype(np.float64)
    squared = (pooled**2).sum(1)
    distances = np.maximum(squared[:, None] - 2 * pooled @ pooled.T + squared[None], 0)
    sample = distances[:1000, :1000]
    bandwidth = np.median(sample[np.triu_indices(len(sample), 1)])
    kernel = np.exp(-distances / bandwidth)
    n = len(source)
    np.fill_diagonal(kernel, 0)
    return kernel[:n, :n].sum() / (n * (n - 1)) + kernel[n:, n:].sum() / (n * (n - 1)) - 2 * kernel[:n, n:].mean()


def naive_frechet(source, target):
    import numpy as np
    import scipy.linalg

    c1, c2 = np.cov(source, rowvar=False), np.cov(target, rowvar=False)
    root = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((source.mean(0) - target.mean(0)) ** 2).sum() + np.trace(c1 + c2 - 2 * root))


def naive_coral(source, target):
    import numpy as np

    d = source.shape[1]
    return float(((np.cov(source, rowvar=False) - np.cov(target, rowvar=False)) ** 2).sum() / (4 * d * d))


def metric_function(name):
    import domadapt as da

    return {
        "mmd (block-wise, unbiased)": lambda s, t: da.gap.mmd(s, t),
        "mmd (linear-time)": lambda s, t: da.gap.mmd(s, t, estimator="linear"),
        "coral": da.gap.coral,
        "frechet": da.gap.frechet,
        "kid (100 subsets of 1000)": lambda s, t: da.gap.kid(s, t),
        "proxy_a_distance (5000/domain)": da.gap.proxy_a_distance,
        "naive numpy mmd": naive_mmd,
        "naive numpy/scipy frechet": naive_frechet,
        "naive numpy coral": naive_coral,
    }[name]


def child(name, size, dim):
    import numpy as np

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    function = metric_function(name)
    rng = np.random.default_rng(0)
    # float32 from the start: a float64 temporary would set the peak and hide the metric's own.
    source = rng.standard_normal((size, dim), dtype=np.float32)
    target = rng.standard_normal((size, dim), dtype=np.float32) * np.float32(1.1) + np.float32(0.05)
    function(source[:50], target[:50])  # warm-up: imports, tracing
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    value = function(source, target)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"value": float(value), "seconds": seconds, "extra_peak_mib": max(0, peak - before) / 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--block-mmd-max", type=int, default=100000)
    parser.add_argument("--naive-max", type=int, default=10000, help="largest N for the naive N x N MMD")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return 0

    pairs = [
        ("mmd (block-wise, unbiased)", "naive numpy mmd"),
        ("mmd (linear-time)", "naive numpy mmd"),
        ("frechet", "naive numpy/scipy frechet"),
        ("coral", "naive numpy coral"),
        ("kid (100 subsets of 1000)", None),
        ("proxy_a_distance (5000/domain)", None),
    ]
    rows = []
    naive_cache = {}
    for size in args.sizes:
        for name, naive in pairs:
            if name.startswith("mmd (block") and size > args.block_mmd_max:
                rows.append({"metric": name, "n": size, "skipped": f"O(N^2 d) on CPU; N > {args.block_mmd_max}"})
                continue
            measured = run_child(name, size, args.dim)
            row = {"metric": name, "n": size, **measured}
            if naive is not None and (size <= args.naive_max or "mmd" not in naive):
                if (naive, size) not in naive_cache:
                    naive_cache[(naive, size)] = run_child(naive, size, args.dim)
                baseline = naive_cache[(naive, size)]
                row["naive"] = baseline
                row["time_ratio_to_naive"] = measured["seconds"] / baseline["seconds"]
                row["memory_ratio_to_naive"] = (measured["extra_peak_mib"] + 1) / (baseline["extra_peak_mib"] + 1)
            elif naive is not None:
                row["naive"] = "does not fit: N x N float64 kernel needs %.0f GiB" % (3 * (2 * size) ** 2 * 8 / 2**30)
            rows.append(row)
            print(json.dumps(row), flush=True)

    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "cpu_count": os.cpu_count()}
    try:
        import tensorflow as tf

        machine["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    except Exception:
        machine["gpus"] = []
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gap_scale.json").write_text(json.dumps({"machine": machine, "dim": args.dim, "rows": rows}, indent=2))
    lines = [
        "# Gap metrics at scale",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, GPUs: {machine['gpus'] or 'none'}. "
        f"d = {args.dim}, N samples per domain. Memory: peak RSS above the process after the data exists.",
        "",
        "| metric | N | seconds | extra peak MiB | naive seconds | naive MiB | time ratio | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['metric']} | {row['n']} | skipped: {row['skipped']} | | | | | |")
            continue
        naive = row.get("naive")
        if isinstance(naive, dict):
            extra = (f"{naive['seconds']:.2f} | {naive['extra_peak_mib']:.0f} | {row['time_ratio_to_naive']:.2f} | "
                     f"{row['memory_ratio_to_naive']:.3f}")
        elif isinstance(naive, str):
            extra = f"{naive} | | | "
        else:
            extra = "- | - | - | -"
        lines.append(f"| {row['metric']} | {row['n']} | {row['seconds']:.2f} | {row['extra_peak_mib']:.0f} | {extra} |")
    (RESULTS / "gap_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def run_child(name, size, dim):
    output = subprocess.run(
        [sys.executable, __file__, "--child", name, str(size), str(dim)],
        capture_output=True, text=True, check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
