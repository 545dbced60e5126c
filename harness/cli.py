"""`python -m harness`: run, inspect and render the paper's tables.

    python -m harness run table2                      # tiny profile, local, ./results
    python -m harness run table2 pretrain.epochs=5    # any resolved spec field, Hydra-style
    python -m harness run table2 --executor slurm     # the same work on SLURM
    python -m harness status table2                   # every job: state, elapsed, log
    python -m harness table table2 --format tex       # re-render from the store alone
    python -m harness ls                              # what exists
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from harness.collate import collate
from harness.errors import HarnessError, unknown
from harness.figures import write_figures
from harness.executors import EXECUTORS, CLUSTER_PROFILES, make_executor
from harness.planner import Plan, merge, plan
from harness.report import render_all, write_report
from harness.progress import Reporter
from harness.render import FORMATS, RENDERERS, write_all
from harness.spec import (
    check_job_spec,
    list_profiles,
    list_tables,
    load_profile,
    load_table,
    parse_overrides,
    split_sweeps,
    sweep_table,
    with_seeds,
)
from harness.status import print_status
from harness.store import Store


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    # key=value overrides may come after flags too (argparse stops the positional list at a flag)
    stray = [x for x in extra if x.startswith("-") or "=" not in x]
    if stray or (extra and not hasattr(args, "overrides")):
        p.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished jobs are kept; run the same command to continue", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="plan, run and collate one table")
    _table_args(run)
    executor_args(run)
    run.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="state, elapsed time and log of every job of a table")
    _table_args(status, table_required=False)
    status.set_defaults(func=cmd_status)

    table = sub.add_parser("table", help="render a table from the store alone, running nothing")
    _table_args(table)
    table.add_argument("--format", default="md", type=choice("format", FORMATS),
                       help=", ".join(FORMATS))  # fmt: skip
    table.set_defaults(func=cmd_table)

    report = sub.add_parser("report", help="results/report.html and .md: every table, figure and claim")
    report.add_argument("--profile", default="tiny", help="smoke, tiny (default) or paper")
    report.add_argument("--results", default="results", help="results directory (default ./results)")
    report.add_argument("--seeds", type=int, default=None, help="pretraining runs per row")
    report.set_defaults(func=cmd_report)

    ls = sub.add_parser("ls", help="list tables, datasets, methods, tasks, profiles, executors")
    ls.set_defaults(func=cmd_ls)

    bench = sub.add_parser("bench", help="benchmarks/ against the reference code (JSON in benchmarks/results)")
    bench.add_argument("which", nargs="?", default="all", type=choice("benchmark", BENCHMARKS),
                       help=", ".join(BENCHMARKS))  # fmt: skip
    bench.add_argument("--quick", action="store_true", help="reduced sizes: seconds, not minutes")
    bench.set_defaults(func=cmd_bench)

    from harness.commands import add_commands  # imported here: harness.commands builds on this module

    add_commands(sub)
    return p


def executor_args(p: argparse.ArgumentParser) -> None:
    """Flags of every command that runs jobs (run, retry)."""
    p.add_argument("--executor", default="local", type=choice("executor", EXECUTORS),
                   help=" or ".join(EXECUTORS))  # fmt: skip
    p.add_argument("--cluster", default="local", help="SLURM cluster profile in slurm/profiles/")
    p.add_argument("--jobs", "-j", type=jobs_flag, default=os.environ.get("HARNESS_JOBS", "auto"),
                   help="local executor: jobs at once, each on a share of the cores free when it starts; 'auto' "
                        "(default, or $HARNESS_JOBS): a job per core, at most one per 2 GiB of available memory, "
                        "one at a time with an NVIDIA GPU")  # fmt: skip
    p.add_argument("--min-free-gb", type=float, default=MIN_FREE_GB,
                   help=f"least free space in --results to start (default {MIN_FREE_GB})")  # fmt: skip


def jobs_flag(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--jobs {text!r}: give a number of jobs at once, or 'auto'") from None


def choice(what: str, valid: tuple[str, ...]):
    """An argparse type for a name from `valid`: a typo names the closest one (choices= does not)."""

    def check(name: str) -> str:
        if name not in valid:
            raise argparse.ArgumentTypeError(str(unknown(what, name, valid)))
        return name

    return check


def _table_args(p: argparse.ArgumentParser, table_required: bool = True) -> None:
    p.add_argument("table", nargs=None if table_required else "?", help="e.g. table2")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. pretrain.epochs=5")
    p.add_argument("--profile", default="tiny", help="smoke, tiny (default) or paper")
    p.add_argument("--results", default="results", help="results directory (default ./results)")
    p.add_argument("--seeds", type=int, default=None, help="pretraining runs per row (default: the spec's)")
    p.add_argument("--data-root", action="append", default=[], metavar="NAME=PATH",
                   help="root of a real dataset, e.g. coco=/data/coco (paper profile)")  # fmt: skip
    p.add_argument("--data-config", default=None,
                   help="YAML file of dataset roots (default ./datasets.yaml if present)")  # fmt: skip
    p.add_argument("--rows", default=None, help="only these rows, comma-separated (e.g. IN-118K,COCO)")
    p.add_argument("--columns", default=None, help="only these columns, comma-separated")


def make_plan(args: argparse.Namespace) -> Plan:
    if args.table == "all":  # every table and figure as one plan: a job two tables share runs once
        tables = [argparse.Namespace(**{**vars(args), "table": name}) for name in list_tables()]
        return merge([make_plan(one) for one in tables])
    table = load_table(args.table)
    if getattr(args, "rows", None) or getattr(args, "columns", None):
        split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
        table = table.select(split(args.rows), split(args.columns))
    profile = load_profile(args.profile)
    overrides, grid = split_sweeps(parse_overrides(args.overrides))
    table = with_seeds(sweep_table(table, grid) if grid else table, getattr(args, "seeds", None))
    try:
        the_plan = plan(table, profile, overrides)
    except ValueError as err:  # unknown dataset/method/task names from the registries
        raise HarnessError(str(err)) from err
    for job in the_plan.jobs.values():  # bad values fail here, before any job runs
        check_job_spec(job.kind, job.spec, job.name)
    return the_plan


def dataset_roots(args: argparse.Namespace) -> dict[str, str]:
    roots: dict[str, str] = {}
    config = Path(args.data_config) if args.data_config else Path("datasets.yaml")
    if args.data_config and not config.exists():
        raise HarnessError(f"dataset config {config} does not exist")
    if config.exists():
        roots.update({str(k): str(v) for k, v in (yaml.safe_load(config.read_text()) or {}).items()})
    for item in args.data_root:
        name, sep, path = item.partition("=")
        if not sep:
            raise HarnessError(f"--data-root '{item}' is not NAME=PATH (for example coco=/data/coco)")
        roots[name] = path
    return roots


def open_store(results: str) -> Store:
    root = Path(results)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{time.time_ns()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise HarnessError(f"results directory {root} is not writable: {err}") from err
    return Store(root)


MIN_FREE_GB = 1.0  # checkpoints, features and logs of a run; paper-size runs need far more


def check_free_space(root: Path, min_free_gb: float) -> None:
    """Refuse to start a run on a (nearly) full disk: jobs would fail midway, one after another."""
    free_gb = shutil.disk_usage(root).free / 1e9
    if free_gb < min_free_gb:
        raise HarnessError(
            f"results directory {root} has {free_gb:.2f} GB free, less than the {min_free_gb:g} GB "
            "a run needs: free some space, choose another --results, or lower --min-free-gb"
        )


def cmd_run(args: argparse.Namespace) -> int:
    the_plan = make_plan(args)
    store = open_store(args.results)
    to_run = [job for job in the_plan.jobs.values() if not store.is_done(job)]
    total, cached = len(the_plan.jobs), len(the_plan.jobs) - len(to_run)
    shared = f", {sum(len(p.jobs) for p in the_plan.parts)} summed over tables" if the_plan.parts else ""
    print(f"{the_plan.table.name} · profile {the_plan.profile.name} · {total} jobs{shared} "
          f"({cached} cached, {total - cached} to run) · results {store.root}", file=sys.stderr)  # fmt: skip
    if args.dry_run:
        print_plan(the_plan, store)
        return 0
    check_free_space(store.root, args.min_free_gb)
    executor = make_executor(args.executor, args.cluster, dataset_roots(args), args.jobs)
    started = time.time()
    outcome = executor.run(the_plan, store, Reporter(total, pending=to_run, at_once=getattr(executor, "at_once", 1)))
    collated = [collate(part, store) for part in the_plan.parts or [the_plan]]
    paths = render_all(collated, store) + (write_report(store, collated) if the_plan.parts else [])
    print("\n".join(RENDERERS["md"](c) for c in collated))
    failed, blocked = outcome.count("failed"), outcome.count("blocked")
    print(f"{total} jobs: {outcome.cached} cached, {outcome.ran} run, {failed} failed, {blocked} "
          f"blocked · {time.time() - started:.1f} s · wrote {', '.join(p.name for p in paths)}",
          file=sys.stderr)  # fmt: skip
    if failed or blocked:
        print(f"see `python -m harness status {args.table} --profile {args.profile}` for the logs",
              file=sys.stderr)  # fmt: skip
    return 1 if failed or blocked else 0


def print_plan(the_plan: Plan, store: Store) -> None:
    for job in the_plan.jobs.values():
        state = "cached" if store.is_done(job) else "to run"
        deps = f"  after {', '.join(d[:12] for d in job.deps)}" if job.deps else ""
        print(f"{job.short}  {job.kind:<9} {state:<7} {job.name}{deps}")


def cmd_report(args: argparse.Namespace) -> int:
    """Collate every table and figure from the store (running nothing) and write the report."""
    store = Store(args.results)
    if not (store.root / "jobs").is_dir():
        raise HarnessError(f"{store.root} holds no results: run `python -m harness run all` first (or pass --results)")
    the_plan = make_plan(argparse.Namespace(table="all", overrides=[], profile=args.profile, seeds=args.seeds))
    collated = [collate(part, store) for part in the_plan.parts]
    paths = render_all(collated, store) + write_report(store, collated)
    print(f"wrote {paths[-2]} and {paths[-1]}", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    store = Store(args.results)
    jobs = list(make_plan(args).jobs.values()) if args.table else store.jobs()
    print_status(jobs, store)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    the_plan = make_plan(args)
    store = Store(args.results)
    collated = collate(the_plan, store)
    if store.root.exists():
        write_all(collated, store.root)
        write_figures(collated, store)
    print(RENDERERS[args.format](collated))
    return 0


BENCHMARKS = ("pretrain", "linear", "orchestration", "scaling", "gpu", "all")


def cmd_bench(args: argparse.Namespace) -> int:
    """Runs benchmarks/bench_<which>.py, each in its own process (its threads never leak into the next)."""
    import subprocess

    names = BENCHMARKS[:-1] if args.which == "all" else (args.which,)
    if args.which == "all" and not args.quick:
        import torch

        if not torch.cuda.is_available():
            print("bench gpu: skipped (no CUDA device here)")
            names = tuple(n for n in names if n != "gpu")
    for name in names:
        script = Path(__file__).resolve().parent.parent / "benchmarks" / f"bench_{name}.py"
        if subprocess.run([sys.executable, str(script), *(["--quick"] if args.quick else [])]).returncode:
            return 1
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from pretrain.data import PRETRAIN_DATASETS
    from pretrain.methods import METHODS
    from transfer.data import TARGETS
    from transfer.tasks import TASKS

    print("tables:")
    for name in list_tables():
        print(f"  {name:<10} {load_table(name).title}")
    print("pretraining datasets:")
    for d in PRETRAIN_DATASETS.values():
        print(f"  {d.name:<10} {d.paper_name} (bias world: {d.biasworld})")
    print("target datasets:")
    for t in TARGETS.values():
        print(f"  {t.name:<10} {t.paper_name} ({t.metric})")
    print("methods:        " + ", ".join(sorted(METHODS)))
    print("transfer tasks: " + ", ".join(sorted(TASKS)))
    print("profiles:")
    for name in list_profiles():
        print(f"  {name:<10} {load_profile(name).description}")
    print("executors:      " + ", ".join(EXECUTORS))
    print("clusters:       " + ", ".join(sorted(p.stem for p in CLUSTER_PROFILES.glob("*.yaml"))))
    return 0
