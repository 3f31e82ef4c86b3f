#!/usr/bin/env python3
"""Compares two runs of the quality benchmark on the same cases (bench-data/quality/RUN, as
written by `cargo bench --bench quality -- gen`): per channel and family, positives detected
and cases with leaked units (count, max), and every case whose detection, kind or blocking
changed. docs/near-verbatim.md quotes it for engine changes measured on one sample.

    scripts/quality-compare.py bench-data/quality/run-before bench-data/quality/run
"""
import collections
import json
import sys


def load(d, name):
    with open(f"{d}/{name}") as f:
        return {v["id"]: v for v in map(json.loads, f)}


def main(a, b):
    cases_a, cases_b = load(a, "cases.jsonl"), load(b, "cases.jsonl")
    if cases_a != cases_b:
        sys.exit("the two runs have different cases (a normaliser change draws another sample)")
    ra, rb = load(a, "verbatim.jsonl"), load(b, "verbatim.jsonl")
    fam = collections.defaultdict(lambda: {"a": [0, 0, 0], "b": [0, 0, 0]})
    changed = collections.Counter()
    for i, c in cases_a.items():
        oa, ob = ra[i], rb[i]
        key = lambda o: (o["detected"], o["kind"], o["blocking"])
        if key(oa) != key(ob):
            changed[(c["positive"], c["family"]) + key(oa) + key(ob)] += 1
        if not c["positive"]:
            continue
        f = fam[("code" if c.get("code") else "prose", c["family"])]
        for side, o in (("a", oa), ("b", ob)):
            f[side][0] += o["detected"]
            leaked = o["leaked"] or 0
            f[side][1] += leaked > 0
            f[side][2] = max(f[side][2], leaked)
    print("channel | family | detected | cases leaking | max leaked   (first run -> second)")
    for (ch, family), f in sorted(fam.items()):
        a_, b_ = f["a"], f["b"]
        print(f"{ch} | {family} | {a_[0]} -> {b_[0]} | {a_[1]} -> {b_[1]} | {a_[2]} -> {b_[2]}")
    print(f"cases whose detection, kind or blocking changed: {sum(changed.values())}")
    for k, n in sorted(changed.items(), key=str):
        print(f"  {n} x positive={k[0]} {k[1]}: {k[2:5]} -> {k[5:8]}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
