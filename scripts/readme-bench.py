#!/usr/bin/env python3
"""scripts/readme-bench.py [RESULTS.md] — copies the tables of a make bench
run (bench/out/results.md) into README.md's "Compared with restic and borg":
every README table whose header row equals a header row of the results
(the main table, the targets table, the S3 table) is replaced by that
table, and the "Re-ingest:" line by the run's. The header paragraph (date,
revision, load) and the summary under the tables are edited by hand."""
import sys

results = open(sys.argv[1] if len(sys.argv) > 1 else "bench/out/results.md").read().splitlines()
readme = open("README.md").read().splitlines()


def tables(lines):
    out, i = {}, 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            out.setdefault(lines[i], lines[i:j])
            i = j
        else:
            i += 1
    return out


new = tables(results)
reingest = next((l for l in results if l.startswith("Re-ingest:")), None)
out, i, replaced = [], 0, 0
while i < len(readme):
    line = readme[i]
    if line in new and i + 1 < len(readme) and readme[i + 1].startswith("|---"):
        j = i
        while j < len(readme) and readme[j].startswith("|"):
            j += 1
        out += new[line]
        replaced += 1
        i = j
        continue
    if reingest and line.startswith("Re-ingest:"):
        line = reingest
    out.append(line)
    i += 1
open("README.md", "w").write("\n".join(out) + "\n")
print(f"readme-bench: {replaced} tables replaced", file=sys.stderr)
