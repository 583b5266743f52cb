"""The README runs and holds: its tour runs as written, its links and its map point to what exists."""

import ast
import contextlib
import io
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_blocks(path):
    text = open(path, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.usefixtures("one_thread")
def test_the_tour_runs_as_written_and_prints_what_it_says(tmp_path, monkeypatch):
    blocks = python_blocks(os.path.join(ROOT, "README.md"))
    tour = next(b for b in blocks if "adapter.save(" in b)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(tour, "README.md (tour)", "exec"), {})
    report = re.search(r"print\(adapter.report\(\)\)\s+# (.*)", tour).group(1).strip()
    assert printed.getvalue().splitlines()[0] == report
    kb = int(re.search(r"adapter.save\(.*# .*?(\d+) KB", tour).group(1))
    assert round(os.path.getsize(tmp_path / "eagle.safetensors") / 1000) == kb


DOCUMENTS = ["README.md", "bench/README.md", "results/README.md",
             *sorted(os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))]


def relative_links(path):
    """The targets of the Markdown links [text](target) in path that point into the repository."""
    text = open(os.path.join(ROOT, path), encoding="utf-8").read()
    targets = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:|#", t)]


@pytest.mark.parametrize("path", DOCUMENTS)
def test_every_relative_link_points_to_a_file_that_exists(path):
    links = relative_links(path)
    folder = os.path.dirname(os.path.join(ROOT, path))
    missing = [t for t in links if not os.path.exists(os.path.normpath(os.path.join(folder, t)))]
    assert missing == [], f"{path} links to files that do not exist: {missing}"


def test_the_readme_is_an_entry_point_of_at_most_160_lines():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 160


def map_entries():
    """(file, dotted name) for each `file:name` of the README's "where each idea lives" table; a bare
    `name` after it in the same row names another function of the same file."""
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    table = text.split("## Where each idea lives")[1].split("\n## ")[0]
    entries = []
    for row in (line for line in table.splitlines() if line.startswith("| ") and line.count("|") == 3):
        current = None
        for code in re.findall(r"`([^`]+)`", row.split("|")[2]):
            if ":" in code:
                current, code = code.split(":")
            if current is not None:
                entries.append((current, code))
    return entries


def defined(path, dotted):
    """Whether the class or function `dotted` ("GPT._forward") is defined in the Python file path."""
    scope = ast.parse(open(path, encoding="utf-8").read()).body
    for name in dotted.split("."):
        found = [n for n in scope if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
        if not found:
            return False
        scope = found[0].body
    return True


def test_every_place_in_the_readmes_map_exists():
    entries = map_entries()
    assert len(entries) >= 30
    missing = [f"{f}:{name}" for f, name in entries if not defined(os.path.join(ROOT, "minipeft", f), name)]
    assert missing == [], f"the README's map names places that do not exist: {missing}"
