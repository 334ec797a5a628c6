"""notebooks/itsacat.ipynb: committed without outputs, and run headless (nbclient) against the
embedded stack on a short run; any cell's error fails the test with that cell's source.

The kernel is this interpreter's ipykernel (a kernel spec written for the test, so that no
kernel installed elsewhere on the machine is picked up). The notebook is executed in
memory: the committed file is never written.
"""

import json
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from itsacat import background, notebook
from tests.e2e.conftest import Stack
from tests.support import data as test_data

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "itsacat.ipynb"
KERNEL = "itsacat-test"
CELL_TIMEOUT_S = 120
# A short run (a few seconds): the shared cat data (tests/support/data.py; the test fails when
# it is missing), 3 epochs, layer 1 fanned out in one invocation; 10 requests per measurement.
SHORT_RUN = {
    "ITSACAT_NOTEBOOK_EPOCHS": "3",
    "ITSACAT_NOTEBOOK_PLAN": "hybrid",
    "ITSACAT_NOTEBOOK_REQUESTS": "10",
}


def test_the_committed_notebook_is_valid_and_has_no_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    clear = "clear them: .venv/bin/jupyter nbconvert --clear-output --inplace " + str(NOTEBOOK)
    for cell in code:
        first = cell.source.splitlines()[0] if cell.source else ""
        assert cell.outputs == [], f"outputs saved in the cell starting {first!r}; {clear}"
        assert cell.execution_count is None, f"execution count in {first!r}; {clear}"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell: parameters"
    assert nb.metadata.kernelspec.name == "python3"


def venv_kernel(tmp_path: Path) -> KernelManager:
    """A kernel manager for this interpreter's ipykernel, whatever else is installed."""
    spec = tmp_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "itsacat (test)", "language": "python"})
    )
    specs = KernelSpecManager(kernel_dirs=[str(spec.parent)])
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def test_the_notebook_runs_end_to_end_on_the_embedded_stack(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in SHORT_RUN.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ITSACAT_TARGET", raising=False)
    test_data.require()
    monkeypatch.setenv("ITSACAT_NOTEBOOK_DATASET", str(test_data.DATASET))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = venv_kernel(tmp_path)
    client = NotebookClient(
        nb,
        km=km,
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    start = time.monotonic()
    try:
        client.execute()  # CellExecutionError (with the cell's source) on any error
    finally:
        # nbclient shuts down only a kernel it started itself, not one it was given
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        # servers left behind by a cell that failed after starting them
        background.stop_all(Path(stack.info.home), names=notebook.SERVERS)
        nbformat.write(nb, tmp_path / "executed.ipynb")  # to look at; not the committed file
    print(f"notebook executed in {time.monotonic() - start:.1f} s")
    outputs = [out for cell in nb.cells for out in cell.get("outputs", [])]
    text = "\n".join(str(out.get("text", "")) for out in outputs)
    assert "SUCCEEDED" in text and "epochs 3, final cost" in text
    assert "p(cat)" in text  # verdicts on the sample pictures
    assert "requests/s" in text and "status 200: 10" in text
    assert "stopped: ['notebook-api', 'notebook-pictures']" in text
    images = sum("image/png" in out.get("data", {}) for out in outputs)
    assert images >= 8  # data, cost so far, the report's 4, verdicts, latency
    assert not set(notebook.SERVERS) & set(background.running(Path(stack.info.home)))
    assert not km.has_kernel
