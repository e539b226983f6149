"""docs/PARITY.md names a test per row: every test it names exists (so the table cannot rot)."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_named_test_exists():
    text = (REPO / "docs" / "PARITY.md").read_text()
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    continued = re.findall(r"`::(\w+)`", text)
    assert len(named) >= 30 and continued
    files = {}
    for path, name in named:
        source = (REPO / path).read_text()  # the file exists
        files[path] = source
        if name:
            assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} is not a test"
    every_source = "\n".join(files.values())
    for name in continued:
        assert re.search(rf"^def {name}\(", every_source, re.M), f"::{name} is not a test"
    assert "recipes" in text and "test_recipe_equals_the_papers_config" in text
