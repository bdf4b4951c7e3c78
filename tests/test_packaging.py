"""How cdnn meets a new user: importing it from a source tree without compiled kernels says in
one line what to do (issue 17: it was a confusing "circular import")."""
import shutil
import subprocess
import sys
from pathlib import Path

import cdnn

# An editable install's import hook would supply the kernels from its own tree; a user's plain
# source tree has no such hook, so the child drops it.
IMPORT_WITHOUT_EDITABLE_HOOKS = (
    "import sys; sys.meta_path[:] = [f for f in sys.meta_path "
    "if 'editable' not in getattr(f, '__module__', '') + repr(f)]; import cdnn")


def test_a_source_tree_without_kernels_says_what_to_do(tmp_path):
    shutil.copytree(Path(cdnn.__file__).parent, tmp_path / "cdnn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    child = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_EDITABLE_HOOKS], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode != 0
    last = child.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: cdnn's compiled kernels are missing"), child.stderr
    assert "pip install -e ." in last and "circular" not in child.stderr
