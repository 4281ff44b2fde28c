"""The docs build with `mkdocs build --strict` (no broken link between pages, no page left out of the nav), the README
stays short, and its links into docs/ name pages and headings that exist."""
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300  # issue 38


def slug(heading: str) -> str:
    """GitHub's and mkdocs' anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_mkdocs_build_strict_passes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= README_MAX_LINES


def test_the_readme_links_into_docs_exist():
    links = re.findall(r"\]\((docs/[^)#]+)(?:#([^)]+))?\)", (REPO / "README.md").read_text())
    assert len(links) >= 10
    for page, anchor in links:
        assert (REPO / page).is_file(), page
        if anchor:
            headings = [slug(line.lstrip("#")) for line in (REPO / page).read_text().splitlines() if line.startswith("#")]
            assert anchor in headings, (page, anchor)
