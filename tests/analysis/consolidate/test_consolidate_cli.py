"""The plan and consolidate commands: registered, and bad input is one error line with exit code 2."""
from __future__ import annotations

from analysis.cli import main


def exit_code(argv: list[str]) -> int:
    """The CLI's exit code whether the error came from an option's declared type (argparse exits 2) or the run."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


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
    assert exit_code(["plan", *paths, "--min-retention", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "min-retention" in capsys.readouterr().err
    assert main(["plan", *paths, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_data_free_plan_cli_writes_plan_json(tmp_path, capsys):
    import json

    from consolidate_tiny import make_adapters

    paths = [str(p) for p in make_adapters(tmp_path, ["a", "b"])]
    assert main(["plan", *paths, "--weights-only", "--out", str(tmp_path / "o"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["adapters_in"] == 2 and data == json.loads((tmp_path / "o" / "plan.json").read_text())
    assert all((tmp_path / "o" / g["path"] / "adapter_config.json").is_file() for g in data["groups"])


def test_consolidate_refuses_bad_numbers_in_one_line(tmp_path, capsys):
    for args, word in [(["--lr", "nan"], "--lr"), (["--full-lr", "inf"], "--full-lr"), (["--p", "0"], "--p"),
                       (["--stages", "0"], "--stages"), (["--export-rank", "-1"], "--export-rank"),
                       (["--threads", "0"], "--threads")]:
        code = exit_code(["consolidate", str(tmp_path), "--data", str(tmp_path), "--strategy", "full-isolation",
                          "--steps", "1", "--out", str(tmp_path / "out"), *args])
        err = capsys.readouterr().err
        assert code == 2 and word in err and err.count("\n") == 1, (args, err)
