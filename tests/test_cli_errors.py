"""argparse usage errors are one line on stderr with exit code 2, in every subcommand; --help is unchanged."""
from __future__ import annotations

import pytest

from analysis.cli import main


@pytest.mark.parametrize("argv, expect", [
    (["review", "decide", "1", "--author", "bo", "--decision", "maybe", "--rationale", "x"], "invalid choice: 'maybe'"),
    (["review", "export", "1", "--format", "html"], "required: --out"),
    (["inspect"], "required: PATH"),
    (["merge", "--rank", "two"], "invalid int value"),
    (["no-such-command"], "invalid choice"),
    ([], "required: COMMAND"),
])
def test_usage_error_is_one_line(argv: list[str], expect: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("adapter-atlas") and ": error: " in lines[0], captured.err
    assert expect in lines[0] and "usage:" not in lines[0]


def test_help_is_unchanged(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["review", "decide", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adapter-atlas review decide") and "--decision" in out and "options:" in out
