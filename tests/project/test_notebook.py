"""notebooks/evaluate.ipynb runs top to bottom (nbclient, a kernel on this interpreter) on the
bundled demo media with random narrowed networks; its cells assert shapes and finite values."""

import json
import os
import sys

import pytest

from tests.helpers.paths import ROOT

pytestmark = pytest.mark.integration

NOTEBOOK = os.path.join(ROOT, "notebooks", "evaluate.ipynb")
KERNEL_NAME = "lipsync-jax-test"


@pytest.fixture
def this_python_kernel(tmp_path, monkeypatch):
    """A kernelspec whose argv is sys.executable (this venv), found first through JUPYTER_PATH;
    nothing is installed into the venv or the user's Jupyter folders."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lipsync-jax tests", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return KERNEL_NAME


def test_evaluate_notebook_runs_top_to_bottom(this_python_kernel, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(not c.outputs for c in code_cells)  # committed without outputs
    assert any("Where the real weights go" in c.source for c in nb.cells if c.cell_type == "markdown")
    client = NotebookClient(nb, timeout=600, kernel_name=this_python_kernel,
                            resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
    client.execute()  # raises CellExecutionError (with the cell's traceback) if any cell fails
    outputs = [o for c in code_cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "MEANINGLESS" in text and "LSE-C" in text and "FVD" in text and "SSIM" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) >= 4  # distance vs offset, confidence, distributions, mouth strip
    tables = [o.data["text/markdown"] for o in outputs if o.output_type == "display_data" and "text/markdown" in o.data]
    assert tables and "| **overall** |" in tables[0]
    # the last cell removed the demo folders (no temp files left behind)
    removed = code_cells[-1].outputs[-1]["text"].strip()
    assert removed.startswith("removed ") and "lipsync_eval_demo_" in removed
    assert not os.path.exists(removed[len("removed "):])
