"""Text to train on: a built-in corpus that needs no download, or any UTF-8 text file.

The built-in corpus is the documentation of the Python standard library itself: the docstrings
of its modules, classes and functions. Every Python install has it, it is English prose (with
some code), and it is the same for a given Python version. Pure-Python modules are read with
`ast` from their source files, so nothing is imported or executed (no side effects, no GUI
windows); built-in C modules (sys, math, itertools, ...) have no source, so they are imported
and their docstrings read with inspect.
"""

import ast
import importlib
import inspect
import os
import re
import sys
import sysconfig
import unicodedata
import warnings


MAX_CHARS = 2_000_000          # the whole corpus
MAX_CHARS_PER_MODULE = 40_000  # so that a few huge modules (decimal, argparse) do not crowd out the rest
# tests, GUIs, easter eggs and installers: skipped whole (any module whose name starts with "_" is skipped too)
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "ensurepip", "lib2to3", "pydoc_data"}


def default_corpus(max_chars=MAX_CHARS):
    """The standard library's docstrings as one ASCII text, modules in sorted order, blank-line separated."""
    seen, parts, total = set(), [], 0
    for name in sorted(sys.stdlib_module_names):
        if name in SKIP or name.startswith("_"):
            continue
        module_chars = 0
        for doc in _module_docs(name):
            doc = clean(doc)
            if len(doc) < 40 or doc in seen:  # drop one-liners like "Return self==value." and repeats
                continue
            seen.add(doc)
            parts.append(doc)
            module_chars += len(doc) + 2
            total += len(doc) + 2
            if module_chars >= MAX_CHARS_PER_MODULE or total >= max_chars:
                break
        if total >= max_chars:
            break
    return "\n\n".join(parts)[:max_chars] + "\n"


def clean(doc):
    """Printable ASCII plus newline: accents folded (e -> e), tabs expanded, trailing spaces and runs of blank lines removed."""
    doc = unicodedata.normalize("NFKD", doc.expandtabs(4)).encode("ascii", "ignore").decode("ascii")
    doc = re.sub(r"[^\x20-\x7e\n]", "", doc)
    doc = "\n".join(line.rstrip() for line in doc.strip().splitlines())
    return re.sub(r"\n{3,}", "\n\n", doc)


def _module_docs(name):
    """Docstrings of one top-level stdlib module: from source when it has some, else from the imported module."""
    stdlib = sysconfig.get_paths()["stdlib"]
    if os.path.isfile(os.path.join(stdlib, name + ".py")):
        yield from _source_docs(os.path.join(stdlib, name + ".py"))
    elif os.path.isfile(os.path.join(stdlib, name, "__init__.py")):
        for folder, dirs, files in os.walk(os.path.join(stdlib, name)):
            dirs[:] = sorted(d for d in dirs if not d.startswith(("test", "_", "idle")))  # walk in a fixed order
            for f in sorted(files):
                if f.endswith(".py"):
                    yield from _source_docs(os.path.join(folder, f))
    elif name in sys.builtin_module_names:  # compiled into the interpreter: importing runs no Python code
        yield from _live_docs(name)


def _source_docs(path):
    try:
        with open(path, encoding="utf-8") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old escape sequences in some sources
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    yield from _tree_docs(tree)


def _tree_docs(node):
    """Docstrings of a node and the classes and functions inside it, in source order (private ones skipped)."""
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        name = getattr(node, "name", "")  # a module has none
        if not name.startswith("_") or name == "__init__":
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc
    for field in ("body", "orelse", "finalbody", "handlers"):  # statements only: no need to visit expressions
        for child in getattr(node, field, ()):
            if isinstance(child, (ast.stmt, ast.excepthandler)):
                yield from _tree_docs(child)


def _live_docs(name):
    try:
        module = importlib.import_module(name)
    except Exception:
        return
    yield inspect.cleandoc(module.__doc__ or "")
    for attr in sorted(vars(module)):
        obj = getattr(module, attr)
        if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isroutine(obj)):
            yield inspect.cleandoc(obj.__doc__ or "")  # own docstring only: getdoc would repeat the base class's
