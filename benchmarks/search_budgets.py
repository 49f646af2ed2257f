"""Search for several latency budgets on this machine, then measure what each search derived.

Builds (or reuses) the latency table, checks its fidelity, runs one search per budget (each
resumable: run the script again after a kill), and measures the derived networks end to end,
interleaved in one process with the base network, against their targets:

    python benchmarks/search_budgets.py --data-root ../shared/data/camvid --out runs/search_budgets \\
        --budgets 0.5 1 2 --threads 2 -o crop=192,256 -o epochs=12 -o warmup_epochs=4

Budgets are multiples of the base network's predicted latency (``--budgets-ms`` for absolute
milliseconds). With ``--recalibrate`` the table's calibration is re-fitted to the machine as it
runs now and every search derived again before measuring (targets stay as first computed).
Writes ``<out>/report.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from hmseg_core.genotype import Genotype
from hmseg_core.search.cost import CostModel
from hmseg_core.search.lut import LatencyTable, TorchTimer, measure_networks
from hmseg_core.search.space import SearchSpace


def run(cmd, log: Path) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr)
    with log.open("a") as f:
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT)


def cli(*args: str):
    return [sys.executable, "-m", "hmseg_core.cli", *args]


def measure(genotypes, size, threads: int, rounds: int):
    """Median ms of each network, as the table's calibration and ``lut check`` measure: after a
    warm-up, five interleaved sweeps of ``rounds / 5`` back-to-back runs per network (a deployed
    network runs frame after frame with its own weights in cache; alternating networks on every
    run would time each with the previous one's weights in cache instead)."""
    return measure_networks(genotypes, size, TorchTimer("cpu", threads), warmup=10, repeats=rounds, passes=5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", type=Path, default=Path("runs/search_budgets"))
    p.add_argument("--base", default="mrms_tiny")
    p.add_argument("--input-size", default="360x480")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="multiples of the base's latency")
    p.add_argument("--budgets-ms", type=float, nargs="+", help="absolute targets in ms (instead of --budgets)")
    p.add_argument("--config", default="config/search_camvid.yaml")
    p.add_argument("-o", "--set", action="append", default=[], metavar="KEY=VALUE", help="search config override")
    p.add_argument("--recalibrate", action="store_true",
                   help="before measuring: re-fit the table's calibration to the machine as it runs now "
                        "(hmseg-core lut recalibrate) and derive every finished search again against it")
    p.add_argument("--rounds", type=int, default=50, help="timed runs per network in the final measurement (5 interleaved sweeps)")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "commands.log"
    h, w = (int(v) for v in args.input_size.split("x"))

    table_path = args.out / f"lut_{h}x{w}.json"
    if not table_path.is_file():
        run(cli("lut", "build", "--base", args.base, "--input-size", args.input_size, "--threads", str(args.threads),
                "--out", str(table_path)), log)
    fidelity_path = args.out / "fidelity.json"
    if not fidelity_path.is_file():
        run(cli("lut", "check", "--table", str(table_path), "--genotypes", "10", "--threads", str(args.threads),
                "--report", str(fidelity_path)), log)
    table = LatencyTable.load(table_path, device=TorchTimer("cpu", args.threads).fingerprint())
    base = Genotype.parse(table.base)
    # targets come from the table as first calibrated, so a recalibration moves no target
    scale0 = table.settings.get("calibrations", [{"scale": table.calibration.scale}])[0]["scale"]
    base_ms = table.predict(base, calibrated=False) * scale0
    targets = args.budgets_ms or [round(f * base_ms, 1) for f in args.budgets]

    if args.recalibrate:
        run(cli("lut", "recalibrate", "--table", str(table_path), "--threads", str(args.threads)), log)
        table = LatencyTable.load(table_path)
    results = []
    for target in targets:
        out = args.out / f"target_{target:g}ms"
        finished = (out / "summary.json").is_file() and json.loads((out / "summary.json").read_text()).get("finished")
        if not finished or args.recalibrate:  # a finished search resumed only derives, against the table as it is now
            cmd = cli("search", "--config", args.config, "--data-root", args.data_root, "--lut", str(table_path),
                      "--target", str(target), "--threads", str(args.threads), "--out", str(out))
            cmd += [f"-o{kv}" for kv in args.set] + (["--resume"] if (out / "last.pt").is_file() else [])
            run(cmd, log)
        results.append({"target_ms": target, **json.loads((out / "summary.json").read_text())})

    # per search: the paper's derived (argmax) genotype and the budget-fitted one, all interleaved with the base
    derived = [(r, kind, Genotype.parse(g)) for r in results
               for kind, g in (("argmax", r["genotype"]), ("budget", r["budget_fit"]["genotype"]))]
    measured = measure([base] + [g for _, _, g in derived], (h, w), args.threads, args.rounds)
    fidelity = json.loads(fidelity_path.read_text())
    lo, hi = CostModel(SearchSpace.from_genotype(base), table).bounds()  # the default O+D+R space
    report = {
        "input_size": [h, w], "threads": args.threads, "lut": str(table_path),
        "base": {"genotype": base.format(), "predicted_ms": table.predict(base), "measured_ms": measured[0]},
        "calibration_scale": table.calibration.scale,
        "space_range_ms": [lo, hi],
        "fidelity": {k: fidelity[k] for k in fidelity if k != "rows"},
        "searches": [],
    }
    lines = [
        f"base {args.base}: predicted {table.predict(base):.1f} ms, measured {measured[0]:.1f} ms (median, {args.threads} threads, "
        f"{h}x{w}; calibration scale {table.calibration.scale:.3f})",
        f"the space reaches {lo:.1f} .. {hi:.1f} ms (predicted)",
        "| target R ms | derivation | predicted ms | measured median ms | measured vs R | measured / base | search wall s | genotype |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (r, kind, g), med in zip(derived, measured[1:]):
        band = r["budget_fit"]["band"]
        if kind == "budget" and not band[0] <= r["budget_fit"]["cost"] <= band[1]:
            kind = "budget (band out of reach)"
        row = {"target_ms": r["target_ms"], "derivation": kind, "genotype": g.format(), "predicted_ms": table.predict(g),
               "measured_ms": med, "vs_target": med / r["target_ms"] - 1, "vs_base": med / measured[0],
               "wall_s": r["wall_s"], "macs": table.predict(g, "macs"), "params": table.predict(g, "params"), "out_dir": r["out_dir"]}
        report["searches"].append(row)
        lines.append(f"| {row['target_ms']:g} | {kind} | {row['predicted_ms']:.1f} | {med:.1f} | {100 * row['vs_target']:+.1f} % | "
                     f"{row['vs_base']:.2f} | {row['wall_s']:.0f} | `{row['genotype']}` |")
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
