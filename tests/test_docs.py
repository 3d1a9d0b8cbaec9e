"""The documents the code cites exist in the repository, and the citations resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec.md"
SOURCES = sorted((ROOT / "ttqkern").rglob("*.py"))


def _spec_sections() -> set[str]:
    return set(re.findall(r"^## (\d+)\.", SPEC.read_text(), flags=re.M))


def _spec_stages() -> set[str]:
    return set(re.findall(r"^\*\*Stage (\d+),", SPEC.read_text(), flags=re.M))


def test_spec_is_in_the_repository_with_its_sections():
    assert _spec_sections() >= {str(i) for i in range(1, 8)}
    assert _spec_stages() == {str(i) for i in range(6)}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_spec_citations_resolve(path):
    text = path.read_text()
    assert "../shared" not in text, "cite docs/ in this repository, not a developer's ../shared"
    sections, stages = _spec_sections(), _spec_stages()
    for sec in re.findall(r"spec(?:\.md)? §(\d+)", text):
        assert sec in sections, f"{path.name} cites spec §{sec}, which docs/spec.md does not have"
    for first, last in re.findall(r"spec stages? (\d+)(?:-(\d+))?", text):
        for stage in range(int(first), int(last or first) + 1):
            assert str(stage) in stages, f"{path.name} cites spec stage {stage}"


README = ROOT / "README.md"


def _readme_commands() -> list[str]:
    """The commands of README's first bash block (what a new user runs first)."""
    block = re.search(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    assert block, "README opens with a bash block of its two commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_links_resolve():
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which is not in the repository"
    assert "PLACEHOLDER" not in text and "TODO" not in text


def test_ci_runs_the_readme_commands():
    """.ci/run runs README's install commands and its test command verbatim (the main job excepted)."""
    main_job, tests = _readme_commands()[:2]
    ci = (ROOT / ".ci" / "run").read_text()
    install_part = main_job.rsplit(" && ", 1)[0]
    assert main_job.endswith("python -m ttqkern.eval") and install_part in ci
    assert " && python -m pytest" in tests and tests in ci
    assert ci.index("pip install torch==2.13.0") < ci.index('pip install ".[')
