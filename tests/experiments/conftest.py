import pytest

from minipeft.experiments import runs
from tests.experiments_common import make_backbones


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """(backbone folders, out folder, results) of one --quick reproduction on tiny backbones."""
    root = tmp_path_factory.mktemp("reproduce")
    folders = make_backbones(root / "backbones")
    results = runs.reproduce(folders, str(root / "out"), quick=True, progress=False)
    return folders, root / "out", results
