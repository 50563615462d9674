#!/usr/bin/env python3
"""Run SQL against the reflex lake with DuckDB (the Python package) and print the result.

    scripts/lake-sql.py [--json] SQL_OR_@FILE...

Each argument is SQL, or @FILE to read SQL from a file (e.g. the output of
`reflex lake views`). Every statement runs in one in-memory DuckDB; the rows of the last one are
printed as a table, or with --json as one JSON array per row. The httpfs extension (for s3://
lakes) is loaded from the duckdb-ext-httpfs package when it is installed (`make lake-tools`).
"""
import json
import os
import site
import sys

try:
    import duckdb
except ImportError:
    sys.exit("error: the duckdb Python package is missing; run `make lake-tools`")


def connect():
    con = duckdb.connect()
    bases = [site.getusersitepackages(), *site.getsitepackages(), *sys.path]
    for base in bases:
        extensions = os.path.join(base, "duckdb_ext", "extensions")
        if os.path.isdir(extensions):
            quoted = extensions.replace("'", "''")
            con.execute(f"SET extension_directory = '{quoted}'")
            break
    return con


def main(argv):
    as_json = "--json" in argv
    args = [a for a in argv if a != "--json"]
    if not args:
        sys.exit(__doc__)
    con = connect()
    result = None
    for arg in args:
        sql = open(arg[1:]).read() if arg.startswith("@") else arg
        result = con.execute(sql)
    columns = [d[0] for d in result.description] if result.description else []
    rows = result.fetchall() if columns else []
    if as_json:
        for row in rows:
            print(json.dumps(list(row), default=str))
        return
    widths = [max([len(c)] + [len(str(r[i])) for r in rows]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main(sys.argv[1:])
