"""The cluster side never loads region code (MAAS's rule)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import provisioningserver

ROOT = Path(__file__).resolve().parent.parent


def test_provisioningserver_source_never_imports_maasserver():
    offenders = []
    for path in (ROOT / "provisioningserver").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name == "maasserver" or name.startswith("maasserver."):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_importing_every_cluster_module_loads_no_region_module():
    modules = [
        info.name
        for info in pkgutil.walk_packages(
            provisioningserver.__path__, prefix="provisioningserver."
        )
    ]
    assert "provisioningserver.rpc.common" in modules
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] == 'maasserver')))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert json.loads(output) == []
