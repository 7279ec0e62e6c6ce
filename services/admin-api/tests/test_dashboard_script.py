"""The dashboard's script parses: a merge or an edit that breaks its syntax breaks every page at
once, which the browser tests report only as time-outs. Node.js checks it in a fraction of a second."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

STATIC = Path(__file__).parents[1] / "src" / "dialtone_admin" / "static"


def test_the_dashboard_script_is_valid_javascript() -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed to check the dashboard's script (apt-get install nodejs)"
    result = subprocess.run([node, "--check", str(STATIC / "dashboard.js")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
