"""Count an export's cached CSV files with DuckDB: the reference point of a warm-cache run.

    uv run --with duckdb python benchmarks/duckdb_count.py DIR -o FILE [--threads 2]

Runs `SELECT patient_id, event_type, count(*) FROM read_csv('DIR/*.csv') GROUP BY 1, 2` (DuckDB's
own CSV reader, its default sniffing, `--threads` threads) over the CSV files in DIR, a server's
`--cache-dir` that holds exactly one export's downloads, and writes the counts as the client
does (`{"patients": ..., "totals": ...}`, sorted, two-space indent, trailing newline), so that
the result is compared with the committed `<export>.json` byte for byte. Prints the query's own
seconds as JSON on stdout. DuckDB is a benchmark-only tool: never a dependency of the project
(`uv run --with duckdb` puts it in a throw-away environment).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import orjson


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("directory", type=Path, help="a directory of one export's CSV bodies")
    parser.add_argument("-o", "--output", type=Path, required=True, help="where the JSON goes")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB's threads")
    args = parser.parse_args(argv)
    files = sorted(args.directory.glob("*.csv"))
    if not files:
        print(f"error: no CSV files in {args.directory}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    connection = duckdb.connect(config={"threads": args.threads})
    pattern = str(args.directory.resolve() / "*.csv").replace("'", "''")
    rows = connection.execute(
        f"SELECT patient_id, event_type, count(*) FROM read_csv('{pattern}') GROUP BY 1, 2"
    ).fetchall()
    query_seconds = time.perf_counter() - started
    patients: dict[str, dict[str, int]] = {}
    totals: Counter[str] = Counter()
    for patient, event_type, count in rows:
        patients.setdefault(str(patient), {})[str(event_type)] = int(count)
        totals[str(event_type)] += int(count)
    document = {"patients": patients, "totals": dict(totals)}
    args.output.write_bytes(
        orjson.dumps(
            document,
            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE,
        )
    )
    result = {
        "files": len(files),
        "rows": sum(totals.values()),
        "query_seconds": query_seconds,
        "duckdb": duckdb.__version__,
        "threads": args.threads,
    }
    sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
