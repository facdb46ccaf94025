"""``python -m analysis.figures``: rebuild every Section 7 figure and Table 7 from saved results.

Never trains. Draws what the results allow, lists the runs that are missing and the sweep that
makes each, and exits 0 when everything was drawn, 1 when only part was (0 with
``--allow-partial``), 2 when nothing could be drawn.

Example::

    python -m analysis.figures --results results --layer 3 --view A --view dW_left
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis.figures import Options, Report, build_all
from analysis.subspace import VIEWS
from lora_repro.errors import LoraReproError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.figures",
        description="Rebuild LoRA §7 figures (3, 4, 6, 7, 8) and Table 7 from saved runs.",
    )
    p.add_argument("--results", type=Path, default=Path("results"), help="results folder")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="figures folder [<results>/figures; <results>/figures/layer<L> for another layer]",
    )
    p.add_argument(
        "--tables",
        type=Path,
        default=None,
        help="tables folder [<results>/tables; <results>/tables/layer<L> for another layer]",
    )
    p.add_argument("--task", default="rotten_tomatoes", help="task name in the run configs")
    p.add_argument("--model", default="minilm", help="model name in the run configs")
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="block index [n_layers // 2]; another layer writes into layer<L>/ subfolders",
    )
    p.add_argument(
        "--view",
        action="append",
        choices=[*VIEWS, "all"],
        help="subspace view(s) to draw, repeatable [A]; the summary always has every view",
    )
    p.add_argument(
        "--ranks",
        type=_ints,
        default=None,
        help="small,large ranks of Fig. 3, used exactly [the paper's 8,64, else the nearest run]",
    )
    p.add_argument("--seeds", type=_ints, default=(0, 1), help="two seeds for Fig. 4 [0,1]")
    p.add_argument("--targets", default="q,v", help="adapted weight types of the runs [q,v]")
    p.add_argument("--weight", default="q", help="weight type of Table 7 / Fig. 8 [q]")
    p.add_argument("--table-ranks", type=_ints, default=(4, 64), help="Table 7 ranks [4,64]")
    p.add_argument("--fig8-ranks", type=_ints, default=(4, 8, 64), help="Fig. 8 ranks [4,8,64]")
    p.add_argument(
        "--group",
        default="runs",
        help="the runs' group (experiments.train group=...) [runs, the default group]",
    )
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs whose config has this value, e.g. adapter.init=kaiming_uniform; repeatable",
    )
    p.add_argument("--n-random", type=int, default=10, help="random pairs for Table 7 [10]")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baselines [0]")
    p.add_argument("--formats", default="png,pdf", help="figure formats [png,pdf]")
    p.add_argument(
        "--allow-partial", action="store_true", help="exit 0 when some figures could be drawn"
    )
    return p


def print_report(report: Report, opts: Options) -> None:
    """Human-readable account of a build on stdout (missing runs on stderr too)."""
    s = report.summary
    if s:
        print(
            f"analysis.figures: {opts.task}/{opts.model}, layer {s['layer']} of {s['n_layers']}, "
            f"views {', '.join(opts.views)} -> {report.out}"
        )
        for key in ("ranks", "seeds"):
            block = s.get("phi11", {}).get(key)
            if not block:
                continue
            print(f"  φ(1,1) {block['pair']}:")
            for row in [k for k in block if k.startswith("dW")] + ["random"]:
                cells = [
                    f"{v}={block[row][v]:.3f}" if block[row][v] is not None else f"{v}=n/a"
                    for v in VIEWS
                ]
                print(f"    {row:7s} " + "  ".join(cells))
        paper = s.get("paper", {}).get("table7", {})
        for r, t in (s.get("table7") or {}).items():
            p = paper.get(r)
            extra = f" (paper: {p['amplification']:.1f}, {p['ratio_to_random']:.1f}x)" if p else ""
            print(
                f"  Table 7 r={r}: amplification {t['amplification']:.2f}, ΔW/random "
                f"{t['ratio_to_random']:.2f}x{extra}"
            )
    for note in report.notes:
        print(f"  note: {note}")
    if report.drawn:
        print(f"  drew {len(report.drawn)}: {', '.join(report.drawn)}")
    for name, why in report.not_drawn.items():
        print(f"  not drawn: {name}: {why}", file=sys.stderr)
    for skipped in report.skipped:
        print(f"  skipped (damaged, retrained by the next sweep): {skipped}", file=sys.stderr)
    if report.missing:
        print("missing runs (draw what exists; run these sweeps for the rest):", file=sys.stderr)
        for m in report.missing:
            print(f"  - {m.missing_message()}", file=sys.stderr)
    if not report.drawn:
        print(
            f"error: nothing could be drawn from {opts.results}; train the runs listed above",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 complete, 1 partial, 2 nothing drawn)."""
    args = parser().parse_args(argv)
    views = args.view or ["A"]
    views = list(VIEWS) if "all" in views else list(dict.fromkeys(views))
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --where takes KEY=VALUE, got {item!r}", file=sys.stderr)
            return 2
        where[key] = value
    where.setdefault("group", args.group)  # runs of another group are another experiment
    try:
        opts = Options(
            results=args.results,
            out=args.out,
            tables_dir=args.tables,
            task=args.task,
            model=args.model,
            layer=args.layer,
            views=tuple(views),
            ranks=args.ranks,
            seeds=args.seeds,
            targets=tuple(t for t in args.targets.split(",") if t),
            weight=args.weight,
            table_ranks=args.table_ranks,
            fig8_ranks=args.fig8_ranks,
            where=where,
            n_random=args.n_random,
            seed=args.seed,
            formats=tuple(f for f in args.formats.split(",") if f),
        )
        report = build_all(opts)
    except (ValueError, LoraReproError) as e:  # bad options, or a file that cannot be written
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_report(report, opts)
    return report.exit_code(args.allow_partial)


if __name__ == "__main__":
    sys.exit(main())
