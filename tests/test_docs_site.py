"""The site's home page lists every page, and the site works opened from disk.

(The built site itself is checked page by page in a real browser by .ci/docs-browser.)
"""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def _nav_pages():
    return re.findall(r":\s*([\w/-]+\.md)\s*$", _read("mkdocs.yml"), re.MULTILINE)


def test_the_home_page_lists_every_top_level_page():
    index = _read("docs/index.md")
    linked = set(re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]*)?\)", index))
    pages = [p for p in _nav_pages() if "/" not in p and p != "index.md"]
    assert "sparse-training.md" in pages
    missing = [p for p in pages if p not in linked]
    assert not missing, f"docs/index.md does not list {missing}"


def test_every_api_page_is_in_the_nav_and_the_overview():
    nav = _nav_pages()
    overview = _read("docs/api.md")
    for page in sorted(os.listdir(os.path.join(ROOT, "docs", "api"))):
        assert f"api/{page}" in nav, page
        assert f"](api/{page})" in overview, page


def test_links_go_to_pages_not_folders():
    # site/index.html opened from disk: a link to foo/ shows a folder listing, foo.html the page
    assert re.search(r"^use_directory_urls:\s*false\s*$", _read("mkdocs.yml"), re.MULTILINE)


def test_nothing_is_fetched_from_the_network_when_a_page_opens():
    cfg = _read("mkdocs.yml")
    assert not re.search(r"^\s*-\s*https?://", cfg, re.MULTILINE), "a script or stylesheet from the network"
    assert re.search(r"^\s+font:\s*false\s*$", cfg, re.MULTILINE), "the theme's web font"
