"""Starting the real `verbatim serve` binary for the Python tests: the address it listens on is
read from its log line, within a deadline; the process is killed if it never says."""

import os
import re
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("VERBATIM_BIN", os.path.join(ROOT, "target", "debug", "verbatim"))


def start(args, extra_env=None, deadline_s=30):
    """Runs `verbatim serve --listen 127.0.0.1:0 ARGS…`; returns (process, "127.0.0.1:PORT")."""
    p = subprocess.Popen([BIN, "serve", "--listen", "127.0.0.1:0", *args], stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "NO_COLOR": "1", **(extra_env or {})})
    log, deadline = [], time.time() + deadline_s
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        log.append(line)
        m = re.search(r"listen=(127\.0\.0\.1:\d+)", line)
        if m:
            return p, m.group(1)
    p.kill()
    raise RuntimeError("verbatim serve did not start:\n" + "".join(log))
