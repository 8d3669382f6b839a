"""FID against training time: one line per model through the FID of each run trained for a
different wall-clock budget, from the result files bench_quality.py, bench_peer.py and
bench_sweep.py leave.

Run from the repository root after those benchmarks (nothing is trained or sampled here):

    python bench/fid_time.py bench/results/quality bench/results/quality-20 bench/results/peer
    python bench/fid_time.py RUNS... --models ddpm fdm-ds --out fid-time.png
    python bench/fid_time.py bench/results/sweep/confirm-* --models ddpm-b32 fdm-ds-b32

Each RUNS folder holds one sub-folder per model with a ``result.json`` (bench_quality.py's
``--out``, one ``--minutes`` budget per folder; bench_peer.py's ``--out``, whose recipes are
named ``peer-<recipe>``). A point is (training seconds / 60, FID) of one result; only results
scored with ``--num`` samples are used, so every point has the same FID floor (about 12.3 at
N = 2000, two disjoint sets of real test images). The chart marks that floor and ``--target``.

Results: a Markdown table, ``bench/results/fid_time.json`` (``--json PATH``) and the chart
(``--out``, default ``bench/results/fid_time.png``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, markdown_table, write_json
from plots import line_chart

FID_FLOOR_2000 = 12.3  # two disjoint sets of 2,000 real test images (BENCHMARKS.md)


def load_points(folders: list[Path], num: int) -> list[dict[str, Any]]:
    """(model, minutes, steps, FID, KID) of every result.json scored with `num` samples. A
    bench_sweep.py result is placed at its budget in quiet minutes (its jobs ran beside others,
    so their wall-clock says nothing); one trained for a number of steps instead is left out."""
    points = []
    for folder in folders:
        for result_file in sorted(folder.glob("*/result.json")):
            record = json.loads(result_file.read_text())
            if "setting" in record:  # bench_sweep.py
                scored, name, minutes = record["num"], record["setting"], record["quiet_minutes"]
            else:
                scored, minutes = record.get("eval", {}).get("num"), record["train_s"] / 60
                name = record["model"] if "model" in record else f"peer-{record['recipe']}"
            if record.get("fid") is None or scored != num or minutes is None:
                continue
            points.append(
                {
                    "model": name,
                    "minutes": minutes,
                    "steps": record["steps"],
                    "fid": record["fid"],
                    "kid": record.get("kid"),
                    "source": str(result_file),
                }
            )
    return sorted(points, key=lambda p: (p["model"], p["minutes"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="bench_quality / bench_peer --out")
    parser.add_argument("--models", nargs="+", default=None, help="the lines to draw (all)")
    parser.add_argument("--num", type=int, default=2000, help="the N of the FIDs to use")
    parser.add_argument("--target", type=float, default=20.0, help="a FID target to mark")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "fid_time.png")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "fid_time.json")
    args = parser.parse_args()
    missing = [str(folder) for folder in args.runs if not folder.is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")

    points = load_points(args.runs, args.num)
    if args.models:
        points = [p for p in points if p["model"] in args.models]
    if not points:
        parser.error(f"no result.json scored with --num {args.num} under {args.runs}")
    series: dict[str, list[tuple[float, float]]] = {}
    for p in points:
        series.setdefault(p["model"], []).append((p["minutes"], p["fid"]))
    references = [(args.target, f"target {args.target:g}")]
    if args.num == 2000:
        references.append((FID_FLOOR_2000, f"floor at N = 2000 ({FID_FLOOR_2000:g})"))
    line_chart(
        series,
        args.out,
        f"FID@{args.num} against training time (2 CPU cores)",
        "training minutes",
        f"FID@{args.num}",
        references,
    )
    write_json(args.json, {"num": args.num, "points": points})
    rows = [
        [
            p["model"],
            f"{p['minutes']:.1f}",
            p["steps"],
            f"{p['fid']:.2f}",
            "-" if p["kid"] is None else f"{p['kid'] * 1e3:.2f}",
        ]
        for p in points
    ]
    headers = ["model", "training min", "steps", f"FID@{args.num}", "KID x 1e3"]
    print(markdown_table(headers, rows))
    print(f"\nwrote {args.out} and {args.json}")


if __name__ == "__main__":
    main()
