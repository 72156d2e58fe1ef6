"""`make lab`: a reader opens a chapter (.py) as a notebook, runs it, and saves it back to the .py.

Starts the Jupyter server that JupyterLab runs on (headless, on 127.0.0.1, random token) over a
temporary copy of chapter 0 and walks the reader's path through its REST and websocket APIs:
jupytext's contents manager -> a kernel session -> save. The server is always stopped, kernel included.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jupytext
import pytest

from toc import ROOT

JUPYTER = Path(sys.executable).parent / "jupyter"
CHAPTER = "00_setup.py"
# Applied after the `parameters` cell, as papermill does for CI: converting the real model (a minute
# on first use) is covered by the CI notebook run; here the point is the path through the server.
CI_PARAMETERS = "prepare_models = False"
CELL_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A headless `jupyter server` on 127.0.0.1 in its own process group (its kernels included)."""

    def __init__(self, root: Path, workdir: Path):
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "server.log"
        env = dict(os.environ)
        # Keep the reader's own Jupyter configuration and runtime files out of the test.
        env["JUPYTER_CONFIG_DIR"] = str(workdir / "config")
        env["JUPYTER_RUNTIME_DIR"] = str(workdir / "runtime")
        command = [
            str(JUPYTER),
            "server",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
        ]
        if os.geteuid() == 0:
            command.append("--allow-root")
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def api(self, method: str, path: str, body: dict | None = None) -> dict | None:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
        return json.loads(payload) if payload else None

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter server exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.api("GET", "/api/status")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        raise AssertionError(f"jupyter server not ready after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        # Kernels are started in the server's process group; end any that outlived it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def execute(ws, session_id: str, code: str) -> tuple[dict, list[dict]]:
    """Run `code` through the kernel's websocket (legacy JSON protocol): (execute_reply, outputs)."""
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "session": session_id,
                    "username": "test",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": True, "allow_stdin": False},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    reply, outputs, idle = None, [], False
    deadline = time.monotonic() + CELL_TIMEOUT
    while reply is None or not idle:
        if time.monotonic() > deadline:
            raise AssertionError(f"cell did not finish in {CELL_TIMEOUT} s:\n{code}")
        message = json.loads(ws.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["msg_type"]
        if kind == "execute_reply":
            reply = message["content"]
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            idle = True
        elif kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"output_type": kind, **message["content"]})
    return reply, outputs


def text_of(outputs: list[dict]) -> str:
    parts = []
    for output in outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        for mime in ("text/plain", "text/markdown"):
            parts.append(output.get("data", {}).get(mime, ""))
    return "".join(parts)


@pytest.mark.skipif(not JUPYTER.exists(), reason="jupyter is installed by make")
def test_chapter_opens_runs_and_saves_back_through_the_jupyter_server(tmp_path):
    import websocket  # websocket-client, a dependency of jupyter_server

    root = tmp_path / "notebooks"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / CHAPTER, root / CHAPTER)
    original = jupytext.reads((root / CHAPTER).read_text(), fmt="py:percent")

    server = Server(root, tmp_path)
    ws = None
    try:
        server.wait_ready()

        # 1. jupytext's contents manager serves the .py as a notebook.
        model = server.api("GET", f"/api/contents/{CHAPTER}?type=notebook&content=1")
        assert model["type"] == "notebook", model["type"]
        notebook = model["content"]
        assert notebook["metadata"]["jupytext"]["text_representation"]["format_name"] == "percent"
        assert [c["source"] for c in notebook["cells"]] == [c.source for c in original.cells]
        code_cells = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert any("parameters" in c["metadata"].get("tags", []) for c in code_cells)

        # 2. A kernel session, as JupyterLab opens one for the notebook, and its cells run in order.
        session = server.api(
            "POST",
            "/api/sessions",
            {"path": CHAPTER, "type": "notebook", "name": CHAPTER, "kernel": {"name": "python3"}},
        )
        kernel_id, session_id = session["kernel"]["id"], uuid.uuid4().hex
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={session_id}",
            header=[f"Authorization: token {server.token}"],
            timeout=CELL_TIMEOUT,
        )
        printed = []
        for cell in code_cells:
            code = cell["source"]
            if "parameters" in cell["metadata"].get("tags", []):
                code += "\n" + CI_PARAMETERS
            reply, outputs = execute(ws, session_id, code)
            errors = [o for o in outputs if o["output_type"] == "error"]
            assert reply["status"] == "ok" and not errors, f"cell failed:\n{code}\n{errors or reply}"
            cell["outputs"], cell["execution_count"] = outputs, reply["execution_count"]
            printed.append(text_of(outputs))
        everything = "".join(printed)
        assert platform.python_version() in everything, everything[:2000]
        assert "HF_HUB_OFFLINE='1'" in everything, everything[:2000]
        assert "Conversion skipped" in printed[-1], printed[-1]

        # 3. An edit saved from the notebook lands in the .py: inputs only, no .ipynb beside it.
        notebook["cells"].append(
            {"cell_type": "code", "metadata": {}, "source": 'print("added in the lab")', "outputs": []}
        )
        server.api(
            "PUT", f"/api/contents/{CHAPTER}", {"type": "notebook", "format": "json", "content": notebook}
        )
        saved_text = (root / CHAPTER).read_text()
        saved = jupytext.reads(saved_text, fmt="py:percent")
        assert [c.source for c in saved.cells] == [c.source for c in original.cells] + [
            'print("added in the lab")'
        ]
        assert [c.metadata for c in saved.cells[:-1]] == [c.metadata for c in original.cells]
        assert "HF_HUB_OFFLINE='1'" not in saved_text  # outputs are not written to the text file
        assert not list(root.glob("*.ipynb")), list(root.iterdir())
    finally:
        if ws is not None:
            ws.close()
        server.stop()
