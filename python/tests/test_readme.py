"""Every Python block of the README marked `readme: python` runs as written in this fresh venv
(the SDK installed as `pip install './python[client]'`, beside google-api-core and the stock
health and reflection clients), each as a program of its own, against a real server; only its
address is replaced."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO, Server


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"<!-- readme: python \(.*?-->\n```python\n(.*?)```", text, flags=re.S)


def test_the_readme_python_blocks_run_as_written(server: Server, tmp_path) -> None:
    blocks = readme_python_blocks()
    assert len(blocks) >= 3, "README.md has the gRPC, REST and reflection python blocks"
    for index, block in enumerate(blocks):
        assert "127.0.0.1:50051" in block, "each block names the default address"
        program = tmp_path / f"block{index}.py"
        program.write_text(block.replace("127.0.0.1:50051", server.grpc))
        # Its own interpreter, in an empty directory: only what the venv has is importable.
        ran = subprocess.run(
            [sys.executable, str(program)], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert ran.returncode == 0, f"block {index} failed:\n{block}\n{ran.stdout}\n{ran.stderr}"
