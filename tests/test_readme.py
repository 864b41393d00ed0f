"""The README stays true: its parameter table is the one the code defines, and it shows the two commands."""

from conftest import REPO

import sys

sys.path.insert(0, str(REPO / "tools"))
from params_table import table  # noqa: E402


def test_readme_parameter_table_matches_the_code():
    readme = (REPO / "README.md").read_text()
    assert table() in readme, "README parameters are stale: run python tools/params_table.py and paste the table"


def test_readme_shows_the_two_commands_and_ci_runs_make_test():
    readme = (REPO / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (REPO / ".ci" / "run").read_text()
