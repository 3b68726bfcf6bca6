"""The notebooks run top to bottom (with CALIGN_NOTEBOOK_QUICK=1: fewer steps)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

FOLDER = os.path.join(os.path.dirname(__file__), "..", "notebooks")


@pytest.mark.parametrize("name", ["01_quickstart_dpo.ipynb", "02_kto_and_reward_model.ipynb",
                                  "03_self_improving.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CALIGN_NOTEBOOK_QUICK", "1")
    notebook = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("exact match" in o.get("text", "") or "KTO" in o.get("text", "")
               for o in outputs)
