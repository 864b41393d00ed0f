"""Run the bloodml CLI in-process (same error handling as the console script) and capture what it prints."""

from __future__ import annotations

import pytest

from bloodml.cli import main


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
        raise SystemExit(0)
    out, err = capsys.readouterr()
    code = done.value.code if isinstance(done.value.code, int) else (0 if done.value.code is None else 1)
    return code, out, err
