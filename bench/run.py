"""`make bench`: openbits against curl and aria2c on a loopback nginx, in one run.

    .venv/bin/python bench/run.py              # everything; rewrites bench/RESULTS.md
    .venv/bin/python bench/run.py --quick      # small sizes, a smoke test in under a minute
    .venv/bin/python bench/run.py --only small # one part (big, checksum, small, api, queue, ondemand); may repeat

Data lives under a scratch directory (default /var/tmp/openbits-bench), made
and removed by this script. Only a full run (no --quick, no --only) rewrites
RESULTS.md, unless --results says otherwise.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from contextlib import nullcontext
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT), str(ROOT / "src")]

from machine import (check_disk, fresh_dir, load_average, machine_line, scratch_volume, source_line,  # noqa: E402
                     tool_versions)
from ondemand import bench_ondemand  # noqa: E402
from parts import Context, Row, Sizes  # noqa: E402
from parts import PARTS as _PARTS  # noqa: E402

#: every part, in the order a full run takes them
PARTS = {**_PARTS, "ondemand": bench_ondemand}

RESULTS = HERE / "RESULTS.md"
HEADER = ("measure", "openbits", "competitor", "their figure", "ratio", "goal", "met")


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.2f}"


def cells(row: Row) -> tuple[str, ...]:
    """A row as the table's text cells."""
    ratio = "" if row.ratio is None else f"{row.ratio:.2f}×"
    met = {None: "", True: "met", False: "NOT met"}[row.met]
    theirs = "" if row.theirs is None else f"{_num(row.theirs)} {row.unit}"
    return (row.measure, f"{_num(row.ours)} {row.unit}", row.competitor or "-", theirs or "-", ratio or "-",
            row.goal or "-", met or "-")


def text_table(rows: list[Row]) -> str:
    lines = [HEADER, *(cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def markdown_table(rows: list[Row]) -> str:
    lines = [HEADER, *(cells(r) for r in rows)]
    out = ["| " + " | ".join(line) + " |" for line in lines]
    out.insert(1, "|" + "|".join("---" for _ in HEADER) + "|")
    return "\n".join(out)


def write_results(rows: list[Row], ctx: Context, machine: str, command: str, loads: tuple[str, str]) -> None:
    cache = ("page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed download; "
             "for the big file's goal row the source is then read back in (the server's file in its memory)"
             if ctx.cold_cache else "page cache could NOT be dropped (no permission): downloads ran warm")
    text = [
        "# openbits benchmark",
        "",
        f"Machine: {machine}",
        "",
        f"Code: {source_line(ROOT)}. Load average (1 min) {loads[0]} at the start, {loads[1]} at the end "
        "(anything near nproc means other work shared the CPUs).",
        "",
        f"Tools: {tool_versions()}; nginx from tests/servers/nginx.py on loopback; {cache}.",
        "",
        f"Command: `{command}` (this file is rewritten by every full run).",
        "",
        markdown_table(rows),
        "",
        "Ratios are openbits / competitor; rates are best-of-runs; MB = 10^6 bytes, MiB = 2^20 bytes.",
        "",
        "## Method and raw figures",
        "",
        *(f"- {note}" for note in ctx.notes),
        "",
    ]
    RESULTS.write_text("\n".join(text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test in under a minute")
    parser.add_argument("--only", action="append", choices=sorted(PARTS), help="run only this part (repeatable)")
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp/openbits-bench"), help="scratch directory")
    parser.add_argument("--keep", action="store_true", help="leave the scratch directory (and daemon logs) behind")
    parser.add_argument("--volume", action=argparse.BooleanOptionalAction, default=True,
                        help="when root and the scratch is on an ext4 without a journal, run on a fresh journaled "
                        "ext4 image mounted there (default: yes, but not with --keep; see bench/machine.py scratch_volume)")
    parser.add_argument("--results", action=argparse.BooleanOptionalAction, default=None,
                        help="rewrite bench/RESULTS.md (default: only for a full run)")
    args = parser.parse_args(argv)

    sizes = Sizes.quick() if args.quick else Sizes()
    names = args.only or list(PARTS)
    write = args.results if args.results is not None else not (args.quick or args.only)
    needed = (2 * sizes.big_bytes if "big" in names else 0) + (1 << 30)
    check_disk(args.scratch, needed)
    machine = machine_line()
    start_load = load_average()
    print(f"{machine}\n{source_line(ROOT)}; load average {start_load}")
    rows: list[Row] = []
    with scratch_volume(args.scratch, needed + (4 << 30)) if args.volume and not args.keep else nullcontext(
            f"scratch {args.scratch} on the host's file system") as where:
        print(where)
        ctx = Context(fresh_dir(args.scratch / "bench"), sizes)
        ctx.notes.append(f"Scratch: {where}.")
        try:
            for name in names:
                print(f"== {name}", flush=True)
                rows += PARTS[name](ctx)
        finally:
            if not args.keep:
                shutil.rmtree(args.scratch, ignore_errors=True)
    if not ctx.cold_cache:
        print("note: the page cache could not be dropped; downloads ran with a warm cache")
    print()
    print(text_table(rows))
    print("", *(f"- {note}" for note in ctx.notes), sep="\n")
    if write:
        command = "make bench" if argv is None and len(sys.argv) == 1 else "bench/run.py " + " ".join(sys.argv[1:])
        write_results(rows, ctx, machine, command, (start_load, load_average()))
        print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
