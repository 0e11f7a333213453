"""docs/reliability.md stays true to the bad-input spec: all 80 case IDs have a row, and every test it cites
exists (the node id resolves to a test function in that file), so a renamed or moved test breaks this, not the
reader."""

from __future__ import annotations

import ast
import re

from tests.conftest import REPO

DOC = REPO / "docs" / "reliability.md"
#: The spec's cases (../shared/reference/BAD-INPUTS.md, section 5): file, DICOM, NIfTI, dataset, label, model,
#: resource level.
SPEC_IDS = ([f"F{i}" for i in range(1, 12)] + [f"D{i}" for i in range(1, 27)] + [f"N{i}" for i in range(1, 13)]
            + [f"S{i}" for i in range(1, 9)] + [f"L{i}" for i in range(1, 7)] + [f"M{i}" for i in range(1, 9)]
            + [f"R{i}" for i in range(1, 10)])
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _rows() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| ([A-Z]\d+) \|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = line
    return rows


def test_every_spec_case_has_one_row_with_a_test_or_a_stated_gap() -> None:
    rows = _rows()
    assert len(SPEC_IDS) == 80
    assert sorted(rows) == sorted(SPEC_IDS)
    for case, line in rows.items():
        assert line.count("|") == 5, f"{case}: expected 4 cells (ID, bad input, behaviour, test)"
        assert NODE.search(line) or "not covered" in line or "not applicable" in line.lower(), case


def test_every_cited_test_exists() -> None:
    cited = NODE.findall(DOC.read_text())
    assert len(cited) > 80
    functions: dict[str, set[str]] = {}
    for path, name in cited:
        if path not in functions:
            file = REPO / path
            assert file.is_file(), f"docs/reliability.md cites {path}, which does not exist"
            functions[path] = {n.name for n in ast.walk(ast.parse(file.read_text()))
                               if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        assert name in functions[path], f"docs/reliability.md cites {path}::{name}, which does not exist"
    assert not re.search(r"`(?!tests/)[\w/]*test_\w+\.py::", DOC.read_text()), "cite tests by their full node id"
