#!/usr/bin/env python3
"""Runs the peer tools of the quality benchmark on the cases `benches/quality.rs gen` wrote.

    quality_peers.py RUN_DIR [--node NODE_DIR] [--only TOOL]

Reads RUN_DIR/cases.jsonl and RUN_DIR/peers/{responses,refs}; writes RUN_DIR/peers.jsonl, one
{"tool", "id", "detected"} per case and tool. Each tool compares every response with the
reference files (the source documents of the positives plus as many distractors) — not with
the whole index Verbatim scans, which none of them could take.

- copydetect 0.5.0 (PyPI): its winnowed fingerprints at its CLI defaults (noise 25, guarantee
  30); code through its pygments tokeniser with identifiers abstracted, prose as raw characters
  (filter off). Detected: the response shares a fingerprint with a reference (any overlap).
- datasketch 2.0.0 (PyPI) MinHash LSH Ensemble: containment search of 50-token windows of the
  response (3-token shingles, 128 permutations) in 100-token windows of the references.
  Detected: a window contained at ≥ 0.5.
- jscpd 5.3.2 (npm), code only: clones of ≥ 50 tokens (its default) between a response and a
  reference.
- Dolos 3.5.1 (npm, @dodona/dolos-lib): Rust code with its tree-sitter parser, prose in its
  character mode, at its defaults. Detected: a pair of response and reference with similarity
  > 0 (a shared fingerprint).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict


def load(run):
    cases = [json.loads(l) for l in open(os.path.join(run, "cases.jsonl"))]
    refs = [json.loads(l) for l in open(os.path.join(run, "peers", "refs.jsonl"))]
    return cases, refs


def resp_path(run, c):
    return os.path.join(run, "peers", "responses", f"{c['id']}.{c['ext']}")


def ref_path(run, r):
    return os.path.join(run, "peers", "refs", r["file"])


def run_copydetect(run, cases, refs):
    from copydetect import CodeFingerprint, compare_files

    k, win = 25, 30 - 25 + 1

    def fp(path, code):
        try:
            return CodeFingerprint(path, k, win, filter=code)
        except Exception:  # a file its lexers cannot take
            return None

    out = {}
    for code in (False, True):
        rs = [(r, fp(ref_path(run, r), code)) for r in refs if r["code"] == code]
        # An inverted index of fingerprints so only references sharing one are compared.
        inv = defaultdict(set)
        for i, (_, f) in enumerate(rs):
            if f is not None:
                for h in f.hashes:
                    inv[h].add(i)
        for c in (c for c in cases if c["code"] == code):
            f = fp(resp_path(run, c), code)
            best_overlap, best_sim = 0.0, 0.0
            if f is not None:
                cand = set()
                for h in f.hashes:
                    cand |= inv.get(h, set())
                for i in cand:
                    overlap, sims, _ = compare_files(f, rs[i][1])
                    best_overlap = max(best_overlap, float(overlap))
                    best_sim = max(best_sim, float(max(sims)))
            # Default verdict: its report's display threshold (similarity ≥ 0.33); score: the
            # largest token overlap with one reference (for the matched-rate comparison).
            out[c["id"]] = (best_sim >= 0.33, best_overlap)
    return {"copydetect": out}


TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text):
    return [t.lower() for t in TOKEN.findall(text)]


def shingles(toks):
    return {" ".join(toks[i : i + 3]) for i in range(max(0, len(toks) - 2))}


def run_minhash(run, cases, refs):
    from datasketch import MinHash, MinHashLSHEnsemble

    perm = 128

    def mh(s):
        m = MinHash(num_perm=perm)
        m.update_batch([x.encode() for x in s])
        return m

    out = {}
    for code in (False, True):
        domains = []
        for r in (r for r in refs if r["code"] == code):
            toks = tokens(open(ref_path(run, r), encoding="utf-8", errors="replace").read())
            for a in range(0, max(1, len(toks) - 50), 50):
                s = shingles(toks[a : a + 100])
                if s:
                    domains.append((f"{r['file']}:{a}", mh(s), len(s)))
        lsh = MinHashLSHEnsemble(threshold=0.5, num_perm=perm, num_part=16)
        lsh.index(domains)
        by_key = {k: (m, n) for k, m, n in domains}

        def containment(q, n, key):
            # Estimated |Q ∩ X| / |Q| from the MinHash Jaccard estimate and the set sizes (the
            # ensemble's answers are candidates, some below its threshold).
            m, size = by_key[key]
            j = q.jaccard(m)
            return j * (n + size) / ((1 + j) * n)
        for c in (c for c in cases if c["code"] == code):
            toks = tokens(c["text"])
            best = 0.0
            for a in range(0, max(1, len(toks) - 25), 25):
                s = shingles(toks[a : a + 50])
                if not s:
                    continue
                q = mh(s)
                for key in lsh.query(q, len(s)):
                    best = max(best, containment(q, len(s), key))
            out[c["id"]] = (best >= 0.5, best)
    return out


def run_jscpd(run, cases, refs, node):
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for sub in ("r", "q"):
            os.makedirs(os.path.join(d, sub))
        for r in (r for r in refs if r["code"]):
            shutil.copy(ref_path(run, r), os.path.join(d, "r", r["file"]))
        code = [c for c in cases if c["code"]]
        for c in code:
            shutil.copy(resp_path(run, c), os.path.join(d, "q", f"{c['id']}.{c['ext']}"))
        rep = os.path.join(d, "report")
        subprocess.run(
            [os.path.join(node, "node_modules", ".bin", "jscpd"), "--min-tokens", "50",
             "--reporters", "json", "--output", rep, "--silent", "--absolute",
             os.path.join(d, "r"), os.path.join(d, "q")],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600,
        )
        best = defaultdict(float)
        try:
            report = json.load(open(os.path.join(rep, "jscpd-report.json")))
        except FileNotFoundError:
            report = {"duplicates": []}
        for dup in report.get("duplicates", []):
            a, b = dup["firstFile"]["name"], dup["secondFile"]["name"]
            for x, y in ((a, b), (b, a)):
                if "/q/" in x and "/r/" in y:
                    i = os.path.basename(x).rsplit(".", 1)[0]
                    best[i] = max(best[i], float(dup.get("tokens", 0)))
        for c in code:
            out[c["id"]] = (c["id"] in best, best.get(c["id"], 0.0))
    return out


DOLOS_JS = r"""
const { Dolos } = require("@dodona/dolos-lib");
(async () => {
  const [language, listFile] = process.argv.slice(2);
  const paths = require("fs").readFileSync(listFile, "utf8").split("\n").filter(Boolean);
  const dolos = new Dolos({ language });
  const report = await dolos.analyzePaths(paths);
  for (const p of report.allPairs()) {
    if (p.similarity > 0) console.log(JSON.stringify([p.leftFile.path, p.rightFile.path, p.similarity]));
  }
})().catch(e => { console.error(e); process.exit(1); });
"""


def run_dolos(run, cases, refs, node):
    out = {}
    node = os.path.abspath(node)
    script = os.path.join(node, "dolos-pairs.js")
    open(script, "w").write(DOLOS_JS)
    groups = [
        ("char", [c for c in cases if not c["code"]], [r for r in refs if not r["code"]], "txt"),
        ("rust", [c for c in cases if c["code"] and c["ext"] == "rs"], [r for r in refs if r["file"].endswith(".rs")], "rs"),
    ]
    for lang, cs, rs, ext in groups:
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for r in rs:
                p = os.path.join(d, "r-" + r["file"].rsplit(".", 1)[0] + "." + ext)
                shutil.copy(ref_path(run, r), p)
                paths.append(p)
            for c in cs:
                p = os.path.join(d, f"q-{c['id']}.{ext}")
                shutil.copy(resp_path(run, c), p)
                paths.append(p)
            lst = os.path.join(d, "list")
            open(lst, "w").write("\n".join(paths))
            res = subprocess.run(["node", script, lang, lst], cwd=node, capture_output=True, text=True, timeout=3600)
            if res.returncode != 0:
                print(f"dolos ({lang}) failed: {res.stderr[-500:]}", file=sys.stderr)
                continue
            best = defaultdict(float)
            for line in res.stdout.splitlines():
                a, b, sim = json.loads(line)
                for x, y in ((a, b), (b, a)):
                    bx, by = os.path.basename(x), os.path.basename(y)
                    if bx.startswith("q-") and by.startswith("r-"):
                        i = bx[2:].rsplit(".", 1)[0]
                        best[i] = max(best[i], float(sim))
            for c in cs:
                out[c["id"]] = (c["id"] in best, best.get(c["id"], 0.0))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("--node", default=None)
    ap.add_argument("--only", default=None)
    a = ap.parse_args()
    cases, refs = load(a.run)
    tools = {
        "copydetect": lambda: run_copydetect(a.run, cases, refs),
        "MinHash LSH (datasketch)": lambda: {"MinHash LSH (datasketch)": run_minhash(a.run, cases, refs)},
    }
    if a.node:
        tools["jscpd"] = lambda: {"jscpd": run_jscpd(a.run, cases, refs, a.node)}
        tools["Dolos"] = lambda: {"Dolos": run_dolos(a.run, cases, refs, a.node)}
    path = os.path.join(a.run, "peers.jsonl")
    done = {}
    if a.only and os.path.exists(path):
        for l in open(path):
            v = json.loads(l)
            if not v["tool"].startswith(a.only):
                done.setdefault(v["tool"], {})[v["id"]] = (v["detected"], v["score"])
    timing = {}
    for name, f in tools.items():
        if a.only and name != a.only:
            continue
        t = time.time()
        results = f()
        timing[name] = time.time() - t
        for label, verdicts in results.items():
            done[label] = verdicts
            n = sum(d for d, _ in verdicts.values())
            print(f"{label}: {n} of {len(verdicts)} cases reported ({timing[name]:.0f} s)", file=sys.stderr)
    with open(path, "w") as w:
        for name, verdicts in done.items():
            for i, (d, score) in verdicts.items():
                w.write(json.dumps({"tool": name, "id": i, "detected": bool(d), "score": score}) + "\n")
    json.dump(timing, open(os.path.join(a.run, "peers-timing.json"), "w"))


if __name__ == "__main__":
    main()
