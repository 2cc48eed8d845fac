"""Probe the CLI as a hostile or unlucky user would (issue 18's classes): every case must end in one line on
stderr with exit 2 (or a correct result) within 20 s, without a traceback. Prints JSON, one row per case:
{"case", "rc", "seconds", "stderr_lines", "traceback", "last_line"}. Network cases use 127.0.0.1 only.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python bench/probe_hostile.py > bench/results_probe_hostile.json
"""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
S = REPO / "sample_adapters"
BUDGET_S = 20.0


def listener(answer: bytes | None) -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)

    def serve() -> None:
        held = []
        while True:
            conn, _ = server.accept()
            held.append(conn)
            if answer is not None:
                conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    a, b = str(S / "format_date"), str(S / "math_add")
    (tmp / "file").write_text("x")
    os.mkfifo(tmp / "fifo")
    blob = ('{"__metadata__":{"k":"' + "x" * 100_000_000 + '"}}').encode()
    (tmp / "big.safetensors").write_bytes(struct.pack("<Q", len(blob)) + blob)
    silent, garbage = listener(None), listener(b"\xff" * 64)
    out = str(tmp / "o")
    return [
        ("scan --k 0", ["scan", a, "--out", out, "--k", "0"]),
        ("scan --top -1", ["scan", a, "--out", out, "--top", "-1"]),
        ("neighbors -k -3", ["neighbors", a, "--index", out, "-k", "-3"]),
        ("families --threshold nan", ["families", "--index", out, "--threshold", "nan"]),
        ("families --sample 0", ["families", "--index", out, "--sample", "0"]),
        ("plan --threads 100000", ["plan", a, b, "--out", out, "--threads", "100000"]),
        ("plan --max-trials -3", ["plan", a, b, "--out", out, "--max-trials", "-3"]),
        ("consolidate --lr nan", ["consolidate", a, b, "--data", str(S / "tasks"), "--strategy", "isolation",
                                  "--steps", "2", "--out", out, "--lr", "nan"]),
        ("merge --param p=nan", ["merge", a, b, "--method", "isolation", "--param", "p=nan", "--out", out]),
        ("merge ties --rank 1e9", ["merge", a, b, "--method", "ties", "--rank", "1000000000", "--out", out]),
        ("scan --scheduler garbage!!", ["scan", a, "--out", out, "--scheduler", "garbage!!"]),
        ("scan --scheduler udp://", ["scan", a, "--out", out, "--scheduler", "udp://127.0.0.1:8786"]),
        ("scan --scheduler closed port", ["scan", a, "--out", out, "--scheduler", f"tcp://127.0.0.1:{closed_port()}"]),
        ("scan --scheduler silent", ["scan", a, "--out", out, "--scheduler", f"tcp://127.0.0.1:{silent}"]),
        ("scan --scheduler garbage answer", ["scan", a, "--out", out, "--scheduler", f"tcp://127.0.0.1:{garbage}"]),
        ("scan --out file", ["scan", a, "--out", str(tmp / "file")]),
        ("scan --out under a file", ["scan", a, "--out", str(tmp / "file" / "idx")]),
        ("scan --out /proc", ["scan", a, "--out", "/proc/atlas-index"]),
        ("scan FIFO root", ["scan", str(tmp / "fifo"), "--out", out]),
        ("plan --out file (before planning)", ["plan", a, b, "--out", str(tmp / "file"), "--force"]),
        ("review list: silent postgres", ["review", "list", "--db", f"postgresql://u:pw@127.0.0.1:{silent}/x"]),
        ("review list: port not a number", ["review", "list", "--db", "postgresql://u:pw@127.0.0.1:notaport/x"]),
        ("inspect 100 MB header", ["inspect", str(tmp / "big.safetensors")]),
    ]


def main() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in cases(Path(tmp)):
            t0 = time.perf_counter()
            try:
                res = subprocess.run([sys.executable, "-m", "analysis.cli", *argv], env=env, capture_output=True,
                                     text=True, timeout=120)
                rc, err = res.returncode, res.stderr
            except subprocess.TimeoutExpired:
                rc, err = None, "timed out after 120 s"
            lines = [ln for ln in err.splitlines() if ln.strip() and "it/s]" not in ln and "adapter/s]" not in ln]
            rows.append({"case": name, "rc": rc, "seconds": round(time.perf_counter() - t0, 2),
                         "stderr_lines": len(lines), "traceback": "Traceback" in err,
                         "last_line": lines[-1][:200] if lines else ""})
    ok = [r for r in rows if r["rc"] == 2 and r["stderr_lines"] == 1 and not r["traceback"]
          and r["seconds"] <= BUDGET_S]
    print(json.dumps({"budget_s": BUDGET_S, "cases": len(rows), "ok": len(ok), "load_average": os.getloadavg(),
                      "cores": os.cpu_count(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
