#!/usr/bin/env python3
"""Writes bench-data/crates/dedup/: the crates corpus manifests with every document that is a
byte-identical copy of an earlier one (same xxh3 in the built index's docs.jsonl) excluded —
the experiment "Identical documents stored once, estimated" in docs/benchmarks.md:

    scripts/dedup-manifests.py && target/release/verbatim index build \\
        --corpus bench-data/crates/dedup --out bench-data/idx-crates-dedup --force
"""
import json
import os
import re
from collections import defaultdict

IDX = "bench-data/idx-crates"
SRC = "bench-data/crates/manifests"
OUT = "bench-data/crates/dedup"

names = [c["name"] for c in json.load(open(f"{IDX}/manifest.json"))["corpora"]]
seen, excluded = set(), defaultdict(list)
for line in open(f"{IDX}/docs.jsonl"):
    d = json.loads(line)
    if d["xxh3"] in seen:
        excluded[d["corpus"]].append(d["path"])
    else:
        seen.add(d["xxh3"])
os.makedirs(OUT, exist_ok=True)
if not os.path.exists(f"{OUT}/src"):
    os.symlink("../manifests/src", f"{OUT}/src")
escape = lambda p: re.sub(r"([\[\]{}*?\\])", r"\\\1", p)  # a path as a glob matching only it
for i, name in enumerate(names):
    lines = open(f"{SRC}/{name}.toml").read().split("\n")
    for j, l in enumerate(lines):
        if l.startswith("exclude = ") and excluded[i]:
            lines[j] = "exclude = " + json.dumps(json.loads(l[len("exclude = "):]) + [escape(p) for p in excluded[i]])
    open(f"{OUT}/{name}.toml", "w").write("\n".join(lines))
print(f"{sum(map(len, excluded.values()))} copies excluded; manifests in {OUT}")
