"""`selfsup report RUN_DIR [RUN_DIR ...] --out report.html`."""
from __future__ import annotations

import json


def add_report_parser(commands, common) -> None:
    p = commands.add_parser("report", help="one self-contained HTML page about one or more runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by selfsup pretrain")
    p.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    p.add_argument("--data", help="labelled images (a root with train/ and test/) for the neighbour grid and "
                                  "the embedding map (default: the run's data, when it has them)")
    p.add_argument("--train", help="labelled training images (instead of --data)")
    p.add_argument("--test", help="labelled test images (instead of --data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir")
    p.add_argument("--queries", type=int, default=6, help="rows of the nearest-neighbour grid (default %(default)s)")
    p.add_argument("--max-points", type=int, default=2000,
                   help="test images on the embedding map (default %(default)s)")
    common(p)
    p.set_defaults(run=run_report)


def run_report(args) -> int:
    from .build import build_report

    out = build_report(args.runs, args.out, data=args.data, train=args.train, test=args.test, device=args.device,
                       cache_dir=args.cache_dir, queries=args.queries, max_points=args.max_points,
                       show_progress=not args.no_progress)
    print(json.dumps({"out": str(out), "runs": len(args.runs)}) if args.json else f"wrote {out}")
    return 0
