"""A real cluster: `dask scheduler` and `dask worker` started from the command line as separate processes on
loopback; `adapter-atlas scan --scheduler ADDRESS` writes the same index as a local scan; the processes end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from analysis.population.dask_cli import cli_cluster
from analysis.population.query import open_population
from analysis.population.scan import SYNCHRONOUS, scan
from analysis.population.sketch import SketchConfig
from analysis.population.store import IndexStore
from analysis.population.synthetic import PlantedSpec, write_population

SPEC = PlantedSpec(families=3, layers=1, d_out=16, d_in=12, core_rank=2, arm_rank=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat")
    return not (state.exists() and state.read_text().split()[2] == "Z")


def test_scan_through_a_command_line_dask_cluster_writes_the_local_index(tmp_path: Path) -> None:
    ads = tmp_path / "ads"
    write_population(SPEC, ads, 8)
    (ads / "broken.safetensors").write_bytes(b"not weights")
    config = SketchConfig(k=8)
    scan([ads], tmp_path / "local", config=config, scheduler=SYNCHRONOUS)
    pids = []
    with cli_cluster(tmp_path / "dask", workers=1) as address:
        assert address.startswith("tcp://127.0.0.1:")
        from distributed import Client

        with Client(address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            worker_pids = client.run(os.getpid)
            assert os.getpid() not in worker_pids.values()  # separate processes, not this one
            pids = list(worker_pids.values())
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3]), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "analysis.cli", "scan", str(ads), "--out", str(tmp_path / "remote"),
                               "--scheduler", address, "--k", "8", "--json"], capture_output=True, text=True, env=env,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-2000:]
        report = json.loads(done.stdout)
        assert (report["total"], report["sketched"], len(report["failed"])) == (9, 8, 1)
    assert pids and not any(_alive(p) for p in pids)  # the workers ended with the context
    import socket

    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as sock:  # and so did the scheduler: nothing listens on its port
        assert sock.connect_ex((host, int(port))) != 0
    a, b = open_population(tmp_path / "local"), open_population(tmp_path / "remote")
    assert a.paths == b.paths and a.sha256 == b.sha256 and a.vectors.tobytes() == b.vectors.tobytes()
    assert IndexStore.open(tmp_path / "local").read_catalog() == IndexStore.open(tmp_path / "remote").read_catalog()
