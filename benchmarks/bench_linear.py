"""Linear protocol: the 45-value sweep, selection on val and refit, against scikit-learn run as ssl-transfer runs it.

Reference (linusericsson/ssl-transfer linear.py): one LogisticRegression(lbfgs, multinomial, warm_start=True,
default tol and max_iter) warm-started through C = 1 / wd, wd = logspace(-6, 5, 45) ascending, the first best
val accuracy selected, then a fresh LogisticRegression at that C fitted on train+val and scored on test. Its BLAS
threads are set with threadpoolctl, each count timed, and the fastest is the baseline. Harness:
`transfer.linear.linear_eval` with its default protocol (and the "path" solver for comparison), each thread count
timed. Features: ReLU'd Gaussian classes with uneven per-feature scales (like pooled CNN features), float32.

python benchmarks/bench_linear.py [--quick] [--threads 1] [--classes 10,100] [--out DIR]
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from transfer.linear import LinearProtocol, linear_eval, wd_grid

sys.path.insert(0, str(Path(__file__).parent))
from record import arguments, table, write  # noqa: E402

FULL = {"n_train": 10_000, "n_val": 2_000, "n_test": 2_000, "dim": 512, "sep": 0.12}
QUICK = {"n_train": 600, "n_val": 200, "n_test": 200, "dim": 32, "sep": 0.4}
TARGET_SPEEDUP, TARGET_TEST_GAP = 3.0, 0.3


def features(
    n: int, dim: int, classes: int, sep: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """x (n, dim) float32 >= 0, y (n,): class means shared across splits, per-feature scales e^N(0, 0.5)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, sep, (classes, dim))
    scale = np.exp(np.random.default_rng(98).normal(0, 0.5, dim))
    y = rng.integers(0, classes, n)
    return (np.maximum(means[y] + rng.normal(0, 1, (n, dim)), 0) * scale).astype(np.float32), y


def sklearn_protocol(train: tuple, val: tuple, test: tuple, threads: int) -> dict:
    """ssl-transfer's sweep, selection and refit with scikit-learn at `threads` BLAS threads."""
    wds = wd_grid(LinearProtocol())
    start = time.perf_counter()
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf, best, best_index = LogisticRegression(warm_start=True), -1.0, 0
        for i, wd in enumerate(wds):
            score = (
                100.0 * (clf.set_params(C=1.0 / wd).fit(*train).predict(val[0]) == val[1]).mean()
            )
            if score > best:
                best, best_index = score, i
        x_tv, y_tv = np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]])
        refit = LogisticRegression(C=1.0 / wds[best_index]).fit(x_tv, y_tv)
        test_score = 100.0 * (refit.predict(test[0]) == test[1]).mean()
    return {"s": time.perf_counter() - start, "best_index": best_index, "test": float(test_score)}


def harness_protocol(train: tuple, val: tuple, test: tuple, threads: int, solver: str) -> dict:
    start = time.perf_counter()
    out = linear_eval(train, val, test, LinearProtocol(threads=threads, solver=solver))
    return {"s": time.perf_counter() - start, "best_index": out["best_index"], "test": out["test"],
            "iterations": int(sum(out["n_iter"]))}  # fmt: skip


def compare(s: dict, classes: int, threads: list[int]) -> dict:
    """Every configuration on one problem; the best of each side and the speedup of best over best."""
    train, val, test = (features(s[f"n_{k}"], s["dim"], classes, s["sep"], seed)
                        for seed, k in enumerate(("train", "val", "test"), 1))  # fmt: skip
    runs = {f"sklearn_{t}t": sklearn_protocol(train, val, test, t) for t in threads}
    runs |= {f"harness_{t}t": harness_protocol(train, val, test, t, "batched") for t in threads}
    runs[f"harness_path_{threads[0]}t"] = harness_protocol(train, val, test, threads[0], "path")
    ref = min((r for k, r in runs.items() if k.startswith("sklearn")), key=lambda r: r["s"])
    ours = min((runs[f"harness_{t}t"] for t in threads), key=lambda r: r["s"])
    speedup, gap = ref["s"] / ours["s"], abs(ours["test"] - ref["test"])
    same = ours["best_index"] == ref["best_index"]
    return {"runs": runs, "best_sklearn_s": ref["s"], "best_harness_s": ours["s"], "speedup": speedup,
            "same_selection": same, "test_gap": gap,
            "target_met": speedup >= TARGET_SPEEDUP and (same or gap <= TARGET_TEST_GAP)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = arguments(__doc__, "reduced size, seconds")
    # 1 thread: on the shared 2-core dev machine, 2 BLAS/OpenMP threads beside busy neighbours spin (2-20x slower)
    parser.add_argument(
        "--threads", default="1", help="thread counts to time on each side, e.g. 1,2"
    )
    parser.add_argument(
        "--classes", default=None, help="class counts, one problem each (10,100; quick: 10)"
    )
    args = parser.parse_args(argv)
    s = QUICK if args.quick else FULL
    args.classes = args.classes or ("10" if args.quick else "10,100")
    threads = [int(t) for t in args.threads.split(",")]
    figures, rows = {}, []
    for c in [int(c) for c in args.classes.split(",")]:
        figures[f"{c}_classes"] = out = compare(s, c, threads)
        for name, r in out["runs"].items():
            rows.append(
                (c, name, r["s"], out["best_sklearn_s"] / r["s"], r["best_index"], r["test"])
            )
    table(rows, ("classes", "run", "seconds", "x best sklearn", "selected", "test %"))
    for key, out in figures.items():
        print(
            f"{key}: {out['speedup']:.2f}x best over best (target {TARGET_SPEEDUP}x), same selection "
            f"{out['same_selection']}, test gap {out['test_gap']:.2f} points, target met {out['target_met']}"
        )
    settings = {**s, "threads": threads, "n_wd": 45, "quick": args.quick,
                "target": {"speedup": TARGET_SPEEDUP, "test_gap": TARGET_TEST_GAP}}  # fmt: skip
    write("bench_linear", settings, figures, args.out)
    return figures


if __name__ == "__main__":
    main()
