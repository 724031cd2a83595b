"""Sphinx helpers for pyrobdl's docs (no network, no execution).

``.. tutorial:: ../../tutorials/01_regression_uncertainty.py``
    Renders a jupytext percent-format tutorial as a page: its markdown cells
    become reStructuredText prose, its code cells ``code-block:: python``, and
    every figure a code cell saves with ``savefig(fig, "NAME")`` is shown after
    that cell when ``tutorials/_figures/NAME.png`` exists (the tutorial wrote it;
    run ``make -C docs figures``), and silently left out otherwise. The tutorial
    is read, never executed.

``.. readme-section:: Performance``
    Renders the body of the ``## Performance`` section of the repository's
    ``README.md`` (up to the next ``#``/``##`` heading; ``###`` subsections are
    kept), so that measured numbers are quoted from one place, the README.
    ``:file:`` names another markdown file (relative to the page).

``.. optional-automodule:: pyrobdl.diagnostics``
    ``automodule`` (with ``:members:``) for a module that may not exist yet: when
    it cannot be imported nothing is emitted, so the ``-W`` build stays clean.

The markdown in tutorials is a small subset, converted by :func:`markdown_to_rst`:
``#``/``##``/``###`` headings, paragraphs, ``-``/``*`` and ``1.`` lists,
```` `code` ````, ``**bold**``, ``*italic*``, ``[text](url)`` links, ``$inline
math$`` and ``$$`` display math on lines of their own, ``>`` notes, and
pipe tables (a header row, a ``|---|`` separator row, body rows, the same
number of cells in each; rendered as a ``list-table``). Anything else (raw
HTML, fenced code, a malformed table) raises an error, so a page never renders
silently wrong.
"""
from __future__ import annotations

import importlib
import os
import re
from typing import List

from docutils import nodes
from docutils.parsers.rst import Directive, directives
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles

FIGURE_CALL = re.compile(r"""\bsavefig\(\s*[\w.\[\]]+\s*,\s*(?:f?["'])([\w.-]+)["']""")
_HEADINGS = {1: "=", 2: "-", 3: "~", 4: "^"}


class MarkdownError(ValueError):
    pass


# ----------------------------------------------------------------------------- inline
_CODE = re.compile(r"`([^`]+)`")
_MATH = re.compile(r"(?<![\\$])\$([^$\n]+?)\$(?!\$)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
_ITAL = re.compile(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])")


def _protect(text: str, pattern: re.Pattern, render, store: List[str]) -> str:
    def sub(m):
        store.append(render(m))
        return f"\x00{len(store) - 1}\x00"

    return pattern.sub(sub, text)


def _escape_plain(text: str) -> str:
    # characters that start reST inline markup in running text
    text = text.replace("\\", "\\\\")
    text = re.sub(r"(?<=\w)_(?=\W|$)", r"\\_", text)  # trailing underscore = reference
    text = text.replace("|", "\\|")
    text = re.sub(r"(?<!\w)_(?=\w)", r"\\_", text)  # leading underscore (_figures)
    return text


def inline(text: str) -> str:
    """Markdown inline markup -> reStructuredText."""
    store: List[str] = []
    text = _protect(text, _CODE, lambda m: "``" + m.group(1) + "``", store)
    text = _protect(text, _MATH, lambda m: ":math:`" + m.group(1).replace("`", "'") + "`", store)
    text = _protect(text, _LINK, lambda m: f"`{_link_text(m.group(1))} <{m.group(2)}>`__", store)
    text = _protect(text, _BOLD, lambda m: "**" + m.group(1) + "**", store)
    text = _protect(text, _ITAL, lambda m: "*" + m.group(1) + "*", store)
    if "*" in text.replace("\\*", ""):
        text = text.replace("*", "\\*")
    text = _escape_plain(text)

    # inline markup must be separated from surrounding word characters: "\ " is an empty separator
    def restore(m):
        return store[int(m.group(1))]

    out = []
    pos = 0
    for m in re.finditer(r"\x00(\d+)\x00", text):
        out.append(text[pos : m.start()])
        before = text[m.start() - 1] if m.start() > 0 else " "
        after = text[m.end()] if m.end() < len(text) else " "
        piece = restore(m)
        if before.isalnum() or before in ")]}'\"":
            piece = "\\ " + piece
        if after.isalnum() or after in "([{'\"":
            piece = piece + "\\ "
        out.append(piece)
        pos = m.end()
    out.append(text[pos:])
    return "".join(out)


def _link_text(t: str) -> str:
    return t.replace("`", "").replace("<", "\\<")


# ----------------------------------------------------------------------------- blocks
def markdown_to_rst(md: str) -> List[str]:
    """Convert the tutorials' markdown subset to reST lines."""
    lines = md.splitlines()
    out: List[str] = []
    i = 0
    para: List[str] = []

    def flush():
        if para:
            out.extend(inline(" ".join(p.strip() for p in para)).splitlines() or [""])
            out.append("")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        if not s:
            flush()
            i += 1
            continue
        if s.startswith("```") or s.startswith("<"):
            raise MarkdownError(f"unsupported markdown (fenced code or HTML): {line!r}")
        if s.startswith("|"):
            flush()
            rows: List[str] = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i].strip())
                i += 1
            out += _table_to_rst(rows)
            continue
        m = re.match(r"^(#{1,4})\s+(.*)$", s)
        if m:
            flush()
            title = inline(m.group(2).strip())
            out += [title, _HEADINGS[len(m.group(1))] * max(len(title), 3), ""]
            i += 1
            continue
        if s == "$$" or (s.startswith("$$") and not s.endswith("$$")) or (s.startswith("$$") and s.endswith("$$")):
            flush()
            body: List[str] = []
            if s != "$$" and s.endswith("$$") and len(s) > 4:
                body = [s[2:-2]]
                i += 1
            else:
                first = s[2:].strip()
                if first:
                    body.append(first)
                i += 1
                while i < len(lines) and not lines[i].strip().endswith("$$"):
                    body.append(lines[i].strip())
                    i += 1
                if i >= len(lines):
                    raise MarkdownError("unterminated $$ display math")
                last = lines[i].strip()[:-2].strip()
                if last:
                    body.append(last)
                i += 1
            out += [".. math::", ""] + ["   " + b for b in body if b] + [""]
            continue
        lm = re.match(r"^(\s*)([-*]|\d+\.)\s+(.*)$", line)
        if lm:
            flush()
            indent = len(lm.group(1))
            marker = "-" if lm.group(2) in "-*" else "#."
            item = [lm.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"^\s*([-*]|\d+\.)\s+", lines[i]):
                item.append(lines[i].strip())
                i += 1
            text = inline(" ".join(item))
            pad = " " * indent
            out.append(f"{pad}{marker} {text}")
            if i < len(lines) and not lines[i].strip():
                # a blank line ends the list unless another item follows
                j = i
                while j < len(lines) and not lines[j].strip():
                    j += 1
                if j < len(lines) and re.match(r"^\s*([-*]|\d+\.)\s+", lines[j]):
                    i = j
                else:
                    out.append("")
            continue
        if s.startswith(">"):
            flush()
            body = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                body.append(lines[i].strip()[1:].strip())
                i += 1
            out += [".. note::", ""] + ["   " + inline(" ".join(body)), ""]
            continue
        if out and out[-1] and not para and re.match(r"^(\s*)(- |#\. )", out[-1]):
            out.append("")
        para.append(line)
        i += 1
    flush()
    return out


_TABLE_SEPARATOR = re.compile(r"^\|?(\s*:?-{3,}:?\s*\|)*\s*:?-{3,}:?\s*\|?$")


def _table_cells(row: str) -> List[str]:
    if not row.endswith("|") or "\\|" in row:
        raise MarkdownError(f"unsupported table row (it must end with '|' and hold no escaped '|'): {row!r}")
    return [c.strip() for c in row[1:-1].split("|")]


def _table_to_rst(rows: List[str]) -> List[str]:
    """A markdown pipe table (header, separator, body rows) -> a reST ``list-table``."""
    if len(rows) < 3 or not _TABLE_SEPARATOR.match(rows[1]):
        raise MarkdownError(f"unsupported table: a header row, a |---| separator row and body rows are needed: {rows[:2]!r}")
    header = _table_cells(rows[0])
    width = len(header)
    if len(_table_cells(rows[1])) != width:
        raise MarkdownError(f"table separator has {len(_table_cells(rows[1]))} cells, the header {width}: {rows[1]!r}")
    out = [".. list-table::", "   :header-rows: 1", ""]
    for row in [rows[0]] + rows[2:]:
        cells = _table_cells(row)
        if len(cells) != width:
            raise MarkdownError(f"table row has {len(cells)} cells, the header {width}: {row!r}")
        for j, cell in enumerate(cells):
            bullet = "   * -" if j == 0 else "     -"
            text = inline(cell) if cell else ""
            out.append(f"{bullet} {text}" if text else bullet)
    out.append("")
    return out


def markdown_section(md: str, title: str) -> str:
    """The body of the ``#``/``##`` section titled ``title`` (up to the next
    ``#`` or ``##`` heading; deeper headings stay in)."""
    lines = md.splitlines()
    start = None
    for k, line in enumerate(lines):
        m = re.match(r"^(#{1,2})\s+(.*?)\s*$", line)
        if m and m.group(2) == title:
            start = k + 1
            break
    if start is None:
        raise MarkdownError(f"no '## {title}' section")
    end = len(lines)
    in_fence = False
    for k in range(start, len(lines)):
        if lines[k].strip().startswith("```"):
            in_fence = not in_fence
        if not in_fence and re.match(r"^#{1,2}\s", lines[k]):
            end = k
            break
    return "\n".join(lines[start:end])


def tutorial_to_rst(path: str, figures_dir: str, figures_rel: str, source_rel: str = "") -> List[str]:
    """reST lines for one jupytext percent-format tutorial."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    out: List[str] = []
    name = os.path.basename(path)
    titled = False
    for cell in nb.cells:
        src = cell.source
        if cell.cell_type == "markdown":
            rst = markdown_to_rst(src)
            out += rst + [""]
            if not titled and rst:
                titled = True
                out += [
                    f".. note:: This page is the tutorial script ``tutorials/{name}`` "
                    "(a jupytext percent-format file: open it as a notebook with jupytext, or run it with "
                    f"``python tutorials/{name}``). It is shown here without being run; the pictures are "
                    "the ones the script saved."
                    + (f" :download:`Download the script <{source_rel}>`." if source_rel else ""),
                    "",
                ]
        elif cell.cell_type == "code":
            if not src.strip():
                continue
            out += [".. code-block:: python", ""] + ["   " + ln if ln.strip() else "" for ln in src.splitlines()] + [""]
            for fig in FIGURE_CALL.findall(src):
                fname = fig if fig.endswith(".png") else fig + ".png"
                if os.path.exists(os.path.join(figures_dir, fname)):
                    out += [f".. image:: {figures_rel}/{fname}", f"   :alt: {fig}", "   :width: 90%", ""]
    return out


# ----------------------------------------------------------------------------- directives
class TutorialDirective(Directive):
    required_arguments = 1
    has_content = False

    def run(self):
        env = self.state.document.settings.env
        rel, abs_path = env.relfn2path(self.arguments[0])
        env.note_dependency(abs_path)
        figures_dir = os.path.join(os.path.dirname(abs_path), "_figures")
        figures_rel = os.path.join(os.path.dirname(self.arguments[0]), "_figures").replace(os.sep, "/")
        try:
            lines = tutorial_to_rst(abs_path, figures_dir, figures_rel, self.arguments[0])
        except (OSError, MarkdownError) as e:
            raise self.error(f"cannot render tutorial {self.arguments[0]}: {e}")
        if os.path.isdir(figures_dir):
            for f in sorted(os.listdir(figures_dir)):
                env.note_dependency(os.path.join(figures_dir, f))
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=abs_path), node)
        return node.children


class ReadmeSection(Directive):
    required_arguments = 1
    final_argument_whitespace = True
    has_content = False
    option_spec = {"file": directives.unchanged}

    def run(self):
        env = self.state.document.settings.env
        title = self.arguments[0].strip()
        rel = self.options.get("file", "../README.md")
        _, abs_path = env.relfn2path(rel)
        env.note_dependency(abs_path)
        try:
            with open(abs_path, encoding="utf-8") as f:
                body = markdown_section(f.read(), title)
            lines = markdown_to_rst(body)
        except (OSError, MarkdownError) as e:
            raise self.error(f"cannot render section {title!r} of {rel}: {e}")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=f"{abs_path} ({title})"), node)
        return node.children


class OptionalAutomodule(Directive):
    required_arguments = 1
    has_content = False
    option_spec = {"no-members": directives.flag}

    def run(self):
        name = self.arguments[0]
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # the module exists but one of its imports is missing: a real error
                raise self.error(f"cannot import {name}: {e}")
            return []
        lines = [f".. automodule:: {name}"]
        if "no-members" not in self.options:
            lines.append("   :members:")
        node = nodes.section()
        node.document = self.state.document
        nested_parse_with_titles(self.state, StringList(lines, source=f"<optional-automodule {name}>"), node)
        return node.children


def setup(app):
    app.add_directive("tutorial", TutorialDirective)
    app.add_directive("optional-automodule", OptionalAutomodule)
    app.add_directive("readme-section", ReadmeSection)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
