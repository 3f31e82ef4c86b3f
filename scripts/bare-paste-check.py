#!/usr/bin/env python3
"""How much of a file pasted into a chat answer without a fence is found, binary against binary.

Writes answers made of one line of prose and then an indexed file of the quality corpus, whole
(150 Python files of the indexed PyPI packages, 200 Rust and C files of the indexed crates, the
same files every run), scans each set with every binary given (`verbatim scan --kind markdown`,
so the text outside fences is read as code too) and prints, per binary: code-channel findings,
files with one, files with one of at least 50 units, and the bytes the findings cover.

    scripts/bare-paste-check.py OLD_BINARY NEW_BINARY [--quality bench-data/quality]

Needs `scripts/quality-bench.sh` run once (its manifests, corpora and index).
"""
import argparse, collections, glob, json, os, random, re, subprocess, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("binaries", nargs="+")
ap.add_argument("--quality", default="bench-data/quality")
a = ap.parse_args()
m = os.path.join(a.quality, "manifests", "indexed")
idx = os.path.join(a.quality, "idx")


def files_of(prefix, exts, skip=None):
    dirs = []
    for t in sorted(glob.glob(f"{m}/{prefix}-*.toml")):
        dirs += re.findall(r'paths = \["([^"]+)"\]', open(t).read())
    out = []
    for d in sorted(dirs):
        for e in exts:
            out += [f for f in glob.glob(f"{m}/{d}/**/*.{e}", recursive=True)
                    if 2000 < os.path.getsize(f) < 40000 and not (skip and re.search(skip, f))]
    out.sort()
    random.Random(7).shuffle(out)
    return out


sets = {
    "python": files_of("pypi", ["py"], r"/(test|tests|unittests|doc|docs)/")[:150],
    "rust-c": files_of("crate", ["rs", "c"])[:200],
}
work = tempfile.mkdtemp()
for name, files in sets.items():
    d = os.path.join(work, name)
    os.makedirs(d)
    for i, f in enumerate(files):
        with open(os.path.join(d, f"{i:03d}.md"), "w") as o:
            o.write("Here is the file you asked for, unchanged:\n\n" + open(f, errors="replace").read())
    for b in a.binaries:
        out = subprocess.run([b, "scan", "--index", idx, "--kind", "markdown", d],
                             capture_output=True, text=True).stdout
        code = [f for f in map(json.loads, out.splitlines()) if f.get("channel") == "code"]
        per = collections.defaultdict(list)
        for f in code:
            per[f["input"]].append((f["output_start"], f["output_end"], f["units"]))
        covered = 0
        for spans in per.values():
            end = 0
            for s, e, _ in sorted(spans):
                s = max(s, end)
                if e > s:
                    covered, end = covered + e - s, e
        big = sum(any(u >= 50 for *_, u in v) for v in per.values())
        print(f"{name:7} {len(files)} files  {b}: {len(code)} findings, {len(per)} files with one, "
              f"{big} with one of >= 50 units, {covered} bytes covered")
