"""Kill a Ray worker node in the middle of a search and show what happens to the search.

    python benchmarks/bench_cluster_failure.py [--trials 6] [--kill-after 1]

Starts a Ray head (1 CPU) and a worker node (1 CPU) on 127.0.0.1, runs a small search across them, and
SIGKILLs the worker node (its raylet and its trial processes) once ``--kill-after`` candidates have
finished, while another trial trains on it. Then it prints every record of the run: the search must end
with all its trials accounted for (the one cut off retried on the head, or recorded failed) and nothing
that had finished lost. Needs a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
COMMON = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_node(name: str) -> int:
    """SIGKILL the raylet started with --node-name=NAME and every process below it (its trial workers)."""
    parents: dict[int, int] = {}
    raylet = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        parents[int(proc.name)] = ppid
        if "raylet" in cmd and f"--node-name={name} " in cmd + " ":
            raylet = int(proc.name)
    if raylet is None:
        raise SystemExit(f"no raylet of node {name!r} found")
    doomed = {raylet}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in doomed and pid not in doomed:
                doomed.add(pid)
                grew = True
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(doomed)


def records(run: Path) -> list[dict]:
    path = run / "trials.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


# no ~/.ray/auth_token of an earlier local Ray, and no RAY_* variables it left (see tests/test_search.py)
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, "HOME": tempfile.mkdtemp()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--kill-after", type=int, default=1, help="finished candidates before the kill")
    parser.add_argument("--budget", default="4.5GFLOPs")
    args = parser.parse_args()
    port = free_port()
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV)
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *COMMON],
                   check=True, capture_output=True, env=ENV)
    subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--node-name=doomed", *COMMON],
                   check=True, capture_output=True, env=ENV)
    tmp = Path(tempfile.mkdtemp())
    run = tmp / "runs" / "killed"
    cmd = [sys.executable, "-m", "nas.search", "--budget", args.budget, "--trials", str(args.trials),
           "--epochs", "3", "--no-early-stop", "--name", "killed", "--runs-dir", str(tmp / "runs"),
           "--address", f"127.0.0.1:{port}", "--seed", "7"]
    t0 = time.time()
    search = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    try:
        while search.poll() is None:
            trained = [r for r in records(run) if r["status"] != "infeasible"]
            if len(trained) >= args.kill_after:
                time.sleep(5)  # let the next trial start on the worker node
                victims = kill_node("doomed")
                print(f"[{time.time() - t0:5.0f} s] SIGKILL to the worker node ({victims} processes) after "
                      f"{len(trained)} trial(s)")
                break
            time.sleep(1)
        out, _ = search.communicate(timeout=3600)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=ENV)
    print(f"[{time.time() - t0:5.0f} s] search exited with {search.returncode}")
    if search.returncode:
        print(out[-3000:])
    print("\n".join(line for line in out.splitlines() if "trial" in line and ("completed" in line or "FAILED" in line
                                                                                 or "stopped" in line)))
    recs = records(run)
    trained = [r for r in recs if r["status"] != "infeasible"]
    by_status = {s: sum(r["status"] == s for r in trained) for s in ("completed", "stopped", "failed")}
    nodes = {r.get("node") for r in trained if r.get("node")}
    print(f"records: {len(recs)} ({len(trained)} trained: {by_status}), on {len(nodes)} node(s); "
          f"asked for {args.trials} trained")
    for r in trained:
        if r["status"] == "failed":
            print(f"  failed trial {r['trial_id']}: {r['error']}")


if __name__ == "__main__":
    main()
