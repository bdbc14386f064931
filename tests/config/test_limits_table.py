"""parsec.limits is one table: every row is a field of `Limits` with the same default, every
tunable row has its option and PARSEC_* variable, and README.rst shows the table as it is."""

from __future__ import annotations

from pathlib import Path

import attrs

from parsec import limits

README = Path(__file__).parents[2] / "README.rst"


def test_rows_are_the_fields() -> None:
    assert [field.name for field in attrs.fields(limits.Limits)] == [row.name for row in limits.TABLE]
    for row in limits.TABLE:
        assert getattr(limits.DEFAULT, row.name) == row.default
        if row.option is not None:
            assert row.env == "PARSEC_" + row.option[2:].replace("-", "_").upper()


def test_readme_shows_the_table() -> None:
    assert limits.rst_table() in README.read_text(encoding="utf-8"), (
        "README.rst: paste parsec.limits.rst_table() in the Limits section"
    )
