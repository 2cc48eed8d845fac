"""The plan and consolidate commands: registered, and bad input is one error line with exit code 2."""
from __future__ import annotations

import pytest

from analysis.cli import main


def test_consolidate_refuses_missing_data_dir(tmp_path, capsys):
    code = main(["consolidate", str(tmp_path), "--data", str(tmp_path / "nope"), "--strategy", "multitask",
                 "--steps", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "no such directory" in err and err.count("\n") == 1


def test_consolidate_refuses_existing_out(tmp_path, capsys):
    code = main(["consolidate", str(tmp_path), "--data", str(tmp_path), "--strategy", "isolation", "--steps", "1",
                 "--out", str(tmp_path)])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_plan_refuses_bad_bar_and_missing_data(tmp_path, capsys):
    from consolidate_tiny import make_adapters

    paths = [str(p) for p in make_adapters(tmp_path, ["a", "b"])]
    with pytest.raises(SystemExit) as exit_:  # a bad number is an argparse usage error: exit 2, one line
        main(["plan", *paths, "--min-retention", "1.5", "--out", str(tmp_path / "o")])
    assert exit_.value.code == 2
    assert "min-retention" in capsys.readouterr().err
    assert main(["plan", *paths, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_data_free_plan_cli_writes_plan_json(tmp_path, capsys):
    import json

    from consolidate_tiny import make_adapters

    paths = [str(p) for p in make_adapters(tmp_path, ["a", "b"])]
    assert main(["plan", *paths, "--out", str(tmp_path / "o"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["adapters_in"] == 2 and data == json.loads((tmp_path / "o" / "plan.json").read_text())
    assert all((tmp_path / "o" / g["path"] / "adapter_config.json").is_file() for g in data["groups"])
