"""The generated protobuf module is committed; it must match proto/ exactly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GENERATED = REPO / "tooti" / "_proto" / "tooti" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(REPO / "proto"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            "tooti/v1/tooti.proto",
        ],
        check=True,
        cwd=REPO,
    )
    for name in ("tooti_pb2.py", "tooti_pb2.pyi"):
        fresh = (tmp_path / "tooti" / "v1" / name).read_text()
        committed = (GENERATED / name).read_text()
        assert fresh == committed, (
            f"{name} is stale: run `python -m grpc_tools.protoc -I proto "
            f"--python_out=tooti/_proto --pyi_out=tooti/_proto tooti/v1/tooti.proto`"
        )
