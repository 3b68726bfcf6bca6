"""The package's layout rules that a reader relies on: no private name
(leading underscore) is imported from another calign module, so what one
module shares with another is public where it belongs."""

import ast
import pathlib

import calign

PACKAGE = pathlib.Path(calign.__file__).parent


def test_no_private_name_is_imported_across_modules():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("calign"):
                found += [f"{path.relative_to(PACKAGE)}: from {node.module} import {a.name}"
                          for a in node.names if a.name.startswith("_") and a.name != "_C"]
    assert not found, "\n".join(found)
