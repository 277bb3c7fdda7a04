"""Every docs page is Markdown that Python-Markdown renders as its author meant.

Python-Markdown (what mkdocs uses) is stricter than most renderers: a block inside a list item
needs four spaces of indentation, a nested list too; a display formula ``$$ ... $$`` is a block of
its own (blank lines around it), not text inside a paragraph; and a formula in a heading reaches
the table of contents and the page title, where nothing typesets it. Pages that break these rules
still build, and show raw TeX or flattened lists. Two checks:

- the source, line by line (no dependency): ``$$`` inside a paragraph, a formula in a heading,
  list items and list blocks indented by other than a multiple of four spaces;
- the page rendered with the site's Markdown extensions (when ``pymdownx`` is installed, the
  ``docs`` extra): no ``$``-delimited or backslashed TeX left outside the formulas and code.
"""

import html.parser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
PAGES = sorted(f for f in os.listdir(DOCS) if f.endswith(".md"))

LIST_ITEM = re.compile(r"^( *)(?:[-*+]|\d+\.) +\S")
FENCE = re.compile(r"^ *(```|~~~)")


def _lines(page):
    """(line number, line) of a page outside fenced code blocks."""
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        lines = f.read().split("\n")
    out, fence = [], None
    for n, line in enumerate(lines, 1):
        m = FENCE.match(line)
        if fence:
            if m and m.group(1) == fence:
                fence = None
            continue
        if m:  # the opening line stays (its indentation counts), the code does not
            fence = m.group(1)
            out.append((n, line[: m.end()]))
            continue
        out.append((n, line))
    return out


def source_problems(page):
    problems = []
    lines = _lines(page)
    in_list = False  # inside a list: from an item to the first unindented non-item block
    in_display = False
    prev = ""
    for n, line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        blank = not stripped
        opens_display = in_display
        # headings: a formula there is raw in the table of contents and the title
        if re.match(r"^#{1,6} ", line) and re.search(r"\$|\\\(|\\\[", line):
            problems.append(f"{page}:{n}: formula in a heading: {stripped}")
        # display formulas: $$ opens a block of its own, after a blank line; closes at a line end
        if "$$" in stripped:
            count = stripped.count("$$")
            if not in_display:
                if not stripped.startswith("$$"):
                    problems.append(f"{page}:{n}: $$ inside a paragraph (a display formula needs its own block)")
                elif prev.strip() and not prev.strip().endswith("$$"):
                    problems.append(f"{page}:{n}: $$ right after text (leave a blank line before it)")
            if count % 2:
                in_display = not in_display
                if not in_display and not stripped.endswith("$$"):
                    problems.append(f"{page}:{n}: text after a closing $$ on its line")
        # lists: items and the blocks inside them sit at multiples of four spaces
        if LIST_ITEM.match(line):
            in_list = True
            if indent % 4:
                problems.append(f"{page}:{n}: list item indented {indent} spaces (nested lists need 4)")
        elif not blank and in_list and not prev.strip() and not opens_display:
            if indent == 0:
                in_list = False
            elif indent % 4:
                problems.append(f"{page}:{n}: block in a list indented {indent} spaces (needs 4 to stay in the item)")
        prev = line
    return problems


@pytest.mark.parametrize("page", PAGES)
def test_markdown_source_follows_python_markdown_rules(page):
    problems = source_problems(page)
    assert not problems, "\n".join(problems)


class _Text(html.parser.HTMLParser):
    """The text of rendered HTML outside code and outside arithmatex formulas."""

    SKIP = frozenset({"code", "pre", "script", "style"})

    def __init__(self):
        super().__init__()
        self.stack = []
        self.parts = []

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "img", "hr", "input", "meta", "link"):
            return
        cls = dict(attrs).get("class") or ""
        self.stack.append(tag in self.SKIP or "arithmatex" in cls.split())

    def handle_endtag(self, tag):
        if tag in ("br", "img", "hr", "input", "meta", "link"):
            return
        if self.stack:
            self.stack.pop()

    def handle_data(self, data):
        if not any(self.stack):
            self.parts.append(data)


def _render(page):
    markdown = pytest.importorskip("markdown")
    pytest.importorskip("pymdownx")
    md = markdown.Markdown(extensions=[
        "admonition", "attr_list", "footnotes", "tables", "toc", "pymdownx.arithmatex",
        "pymdownx.highlight", "pymdownx.inlinehilite", "pymdownx.superfences", "pymdownx.details"],
        extension_configs={"pymdownx.arithmatex": {"generic": True}})
    with open(os.path.join(DOCS, page), encoding="utf-8") as f:
        return md.convert(f.read())


RAW_TEX = re.compile(r"\$\$|\$[^$\s][^$]*\\[A-Za-z]|\\[()\[\]]|\\(?:frac|sum|mathbf|mathrm|operatorname|left|right"
                     r"|cdot|times|partial|top|odot|sqrt|rho|varepsilon|alpha|sigma|text|hat|bar|ldots)\b")


@pytest.mark.parametrize("page", PAGES)
def test_rendered_page_has_no_raw_tex_outside_formulas(page):
    html_text = _render(page)
    parser = _Text()
    parser.feed(html_text)
    text = "".join(parser.parts)
    hits = [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in RAW_TEX.finditer(text)]
    assert not hits, f"docs/{page}: raw TeX outside formulas and code:\n" + "\n".join(hits[:10])


def test_the_checks_catch_what_they_are_for(tmp_path, monkeypatch):
    """Each rule fires on the breakage it exists for (so a passing page means something)."""
    bad = (
        "# Title with $T$\n\n"
        "- item and\n  $$a + b$$\n  more\n- text $$a$$ inline\n"
        "- item\n  - nested two spaces\n\n  a paragraph two spaces in\n"
        "Text\n$$\nx\n$$\n"
        "- item\n\n  ```python\n  x = 1\n  ```\n"
    )
    (tmp_path / "bad.md").write_text(bad)
    monkeypatch.setattr(__import__(__name__), "DOCS", str(tmp_path))
    problems = "\n".join(source_problems("bad.md"))
    for what in ("formula in a heading", "$$ inside a paragraph", "list item indented 2",
                 "block in a list indented 2", "$$ right after text", "bad.md:17: block in a list"):
        assert what in problems, what
    good = "# Title\n\n- item\n\n    $$\n    a\n    $$\n\n    more\n\n    - nested\n\nText\n\n$$\nx\n$$\n"
    (tmp_path / "good.md").write_text(good)
    assert source_problems("good.md") == []
