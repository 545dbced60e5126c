"""What every benchmark records: the machine, the settings and the figures, in benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """The machine a figure was measured on; the load average says how busy it was (shared dev machines)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write(name: str, settings: dict, figures: dict, out: Path = RESULTS) -> Path:
    """<out>/<name>.json = {machine, settings, figures} (out: benchmarks/results by default); returns its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    payload = {"machine": machine(), "settings": settings, "figures": figures}
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}")
    return path


def table(rows: list[tuple], header: tuple) -> None:
    """Prints rows under a header, columns padded to their widest entry."""
    cells = [
        [f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in [header, *rows]
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def arguments(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """Every benchmark's command line: --quick (CI checks that it works, never a time) and --out."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON (default benchmarks/results)")
    return parser
