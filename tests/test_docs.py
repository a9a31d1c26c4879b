"""Every ```python block in docs/*.md and README.md runs (each page's blocks in order, one namespace)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def _blocks(page):
    return FENCE.findall(page.read_text())


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists() and _blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{page.stem}"}
    for i, code in enumerate(_blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - the message is what matters
            raise AssertionError(f"{page.name}, python block {i} failed: {exc!r}\n---\n{code}") from exc
