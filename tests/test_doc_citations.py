"""The repository stands alone: comments cite the protocol reference by its path in the
repository (`docs/protocol/commands.md §9.5`), and every cited file and section exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "protocol"
_NAMES = "|".join(re.escape(p.stem) for p in sorted(DOCS.glob("*.md")) if p.stem != "README")
_CITATION = re.compile(r"docs/protocol/([\w-]+)\.md(?: ?§ ?(\d+(?:\.\d+)*))?")
_BARE = re.compile(rf"(?<![\w/.-])({_NAMES})\.md")


def _tracked_text_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "parsec", "twisted", "tests", "benchmarks", "etc", "systemd", "tools"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    return [REPO / name for name in out if not name.endswith((".png", ".ico"))]


def _headings(name: str) -> str:
    return (DOCS / f"{name}.md").read_text(encoding="utf-8")


def test_citations_name_existing_sections() -> None:
    missing: list[str] = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in _CITATION.finditer(text):
            name, section = match.groups()
            if not (DOCS / f"{name}.md").exists():
                missing.append(f"{path.relative_to(REPO)}: {match.group(0)}")
                continue
            if section and not re.search(
                rf"^#+ .*?(§ ?)?{re.escape(section)}[.\s)]", _headings(name), re.MULTILINE
            ):
                missing.append(f"{path.relative_to(REPO)}: {match.group(0)}")
    assert missing == []


def test_no_citation_by_bare_file_name() -> None:
    bare = [
        f"{path.relative_to(REPO)}: {match.group(0)}"
        for path in _tracked_text_files()
        if path.name != "test_doc_citations.py"
        for match in _BARE.finditer(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert bare == []
