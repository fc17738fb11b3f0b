"""Executes every notebook in notebooks/ and checks that none is committed with outputs."""
import os
import pathlib
import sys

import nbformat
import pytest
from ipykernel import kernelspec as ipykernel_kernelspec
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT_S = 300


def test_notebooks_are_found():
  assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A "python3" kernelspec that runs this interpreter, found before any installed one.

  A machine may have no kernelspec at all, or a "python3" one that points to another
  interpreter (without this package). Writing one into a private directory at the head of
  JUPYTER_PATH makes the kernel the interpreter running the tests, without touching the user's
  Jupyter directories.
  """
  data_dir = tmp_path_factory.mktemp("jupyter")
  ipykernel_kernelspec.write_kernel_spec(str(data_dir / "kernels" / KERNEL_NAME),
                                         overrides={"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                             "{connection_file}"]})
  saved = {key: os.environ.get(key) for key in ("JUPYTER_PATH", "JAX_PLATFORMS", "MPLBACKEND")}
  os.environ["JUPYTER_PATH"] = os.pathsep.join(
      [str(data_dir)] + [p for p in (saved["JUPYTER_PATH"] or "").split(os.pathsep) if p])
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["MPLBACKEND"] = "Agg"  # headless; IPython switches to the inline backend anyway
  yield
  for key, value in saved.items():
    if value is None:
      os.environ.pop(key, None)
    else:
      os.environ[key] = value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_no_stored_outputs(path):
  nb = nbformat.read(path, as_version=4)
  stale = [i for i, cell in enumerate(nb.cells)
           if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
  assert not stale, f"{path.name}: code cells {stale} carry stored outputs; clear them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, kernel_env):
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME,
                          resources={"metadata": {"path": str(ROOT)}})
  client.execute()  # raises CellExecutionError, naming the cell, on the first failing cell
  errors = [output for cell in nb.cells if cell.cell_type == "code" for output in cell.outputs
            if output.output_type == "error"]
  assert not errors, f"{path.name}: {errors}"
