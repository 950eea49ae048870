"""The tutorials in ``tutorials/``: committed without outputs, and run end to end.

Each notebook is executed in a fresh kernel started with the interpreter that
runs the tests (never whatever ``python3`` kernel spec the machine has), from
the ``tutorials/`` folder, as Jupyter would open it. Any cell error fails the
test. The executed copy stays in memory; nothing is written back.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = ["vision_attribution.ipynb", "nlp_attribution.ipynb", "evaluating_methods.ipynb"]

#: One torch thread: on a small shared CPU, two threads per process oversubscribe the cores as soon as
#: anything else runs, and these small models then run several times slower, not faster.
KERNEL_ENV = {"OMP_NUM_THREADS": "1"}

#: Seconds one cell may take: the slowest takes about 5 s on a 2-core CPU; the
#: margin is for a machine busy with other work.
CELL_TIMEOUT = 300


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_is_stripped(name):
    nb = json.loads((TUTORIALS / name).read_text(encoding="utf-8"))
    assert nb["cells"], f"{name} has no cells"
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            where = f"{name}, cell {cell.get('id')}"
            assert cell["outputs"] == [], f"{where} has outputs: strip them (nbstripout)"
            assert cell["execution_count"] is None, f"{where} has an execution count: strip it (nbstripout)"
    assert "widgets" not in nb["metadata"], f"{name} holds widget state: strip it (nbstripout)"


def _this_interpreter_kernel():
    """A kernel manager class that starts ipykernel on this interpreter, whatever kernel the notebook names."""
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from traitlets import default

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name="Python (tests)", language="python", env=KERNEL_ENV)

    class ThisInterpreterKernel(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _this_interpreter(self):
            return ThisInterpreter(parent=self)

    return ThisInterpreterKernel


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_tutorial_runs(name):
    pytest.importorskip("ipykernel")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")

    nb = nbformat.read(TUTORIALS / name, as_version=4)
    check = nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)")
    nb.cells.insert(0, check)
    client = nbclient.NotebookClient(nb, kernel_manager_class=_this_interpreter_kernel(), timeout=CELL_TIMEOUT,
                                     resources={"metadata": {"path": str(TUTORIALS)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    print(f"{name}: {time.perf_counter() - start:.1f} s")
    printed = "".join(out.get("text", "") for out in check.outputs).strip()
    assert printed == sys.prefix, f"the kernel ran in {printed!r}, not in this environment ({sys.prefix!r})"
