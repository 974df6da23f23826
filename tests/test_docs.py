"""The documentation cannot rot: the site builds with `mkdocs build --strict` (a broken link or
anchor, a page left out of the nav or a missing include fails it), the generated
experiment-file page is current, the command-line page covers every verb, and the README
stays a short front page whose links resolve."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from hpsearch.search.cli import build_parser
from hpsearch.search.experiment.reference import REFERENCE_PAGE, REGENERATE, render_markdown

REPO = Path(__file__).resolve().parents[1]


def test_the_site_builds_in_strict_mode_without_a_warning(tmp_path):
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2
    )
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert not re.findall(r"^(?:WARNING|ERROR).*$", log, flags=re.M), log
    assert (site / "index.html").is_file()
    assert (site / "reference" / "experiment-file" / "index.html").is_file()


def test_the_experiment_file_reference_is_current():
    page = REPO / REFERENCE_PAGE
    assert page.is_file() and page.read_text() == render_markdown(), (
        f"{REFERENCE_PAGE} is stale (the schema or the dimension table changed): regenerate it "
        f"with `make docs` or `{REGENERATE}`"
    )


def test_every_verb_has_its_section_in_the_command_line_reference():
    (verbs,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    page = (REPO / "docs" / "reference" / "cli.md").read_text()
    missing = [v for v in verbs.choices if f"### {v}\n" not in page]
    assert not missing, f"docs/reference/cli.md has no section for {missing}"


def test_the_readme_is_a_short_front_page_whose_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150, "the README is the front page: move details to docs/"
    first_block = text.split("```")[1]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [
        ["make", "run"],
        ["make", "test"],
    ]
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"
