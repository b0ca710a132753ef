"""Median (min–max) wall and CPU seconds and the largest peak RSS per command of interleave.sh's
TSV, and each command's median wall over DuckDB's."""
import collections, statistics, sys

rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    p = line.rstrip("\n").split("\t")
    if len(p) != 5 or p[0] == "round":
        continue
    rows[p[1]].append((float(p[2]), float(p[3]), int(p[4])))
duck = statistics.median(w for w, _, _ in rows["duckdb"]) if "duckdb" in rows else None
for what, runs in sorted(rows.items()):
    wall = [r[0] for r in runs]
    cpu = [r[1] for r in runs]
    rss = max(r[2] for r in runs)
    ratio = f"  {statistics.median(wall) / duck:.2f}x DuckDB" if duck else ""
    print(f"{what:10} n={len(runs)} wall {statistics.median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f})"
          f" cpu {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) peak {rss / 1024:.0f} MiB{ratio}")
