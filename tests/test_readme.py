"""The README's Python blocks run as written, and the figures in their comments are what they print."""

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
