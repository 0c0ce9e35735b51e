"""Start the llama.cpp OpenAI-compatible server (llama-cpp-python) on loopback for a GGUF.

A local teacher behind the ``openai_compat`` backend without a GPU::

    from teachers.llamacpp_server import llama_server
    from workbench.models import gemma_gguf_path

    with llama_server(gemma_gguf_path()) as url:   # http://127.0.0.1:PORT/v1
        cfg.teacher.base_url = url
        run_cache_job(cfg)

Needs the ``llamacpp`` extra (``pip install -e '.[llamacpp]'``).
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from teachers.base import TeacherUnavailable


class ServerError(TeacherUnavailable):
    """The server did not start (missing package, bad model file, port, timeout)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def llama_server(gguf: Path, *, alias: str = "gemma3-270m", threads: int = 2,
                 timeout_s: float = 120.0, n_ctx: int = 2048) -> Iterator[str]:
    """Yield the server's base URL (``http://127.0.0.1:PORT/v1``); stop it afterwards.

    ``alias`` is the model name the server answers to (``teacher.model``); the server
    returns log-probabilities (``--logits_all``), which soft labels need.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        raise ServerError("llama-cpp-python is not installed: pip install -e '.[llamacpp]' "
                          "(make test builds it)")
    port = free_port()
    with tempfile.NamedTemporaryFile("wb", suffix=".log", delete=False) as log:
        # A pipe would fill with the model-load log and block the server: log to a file.
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--logits_all", "true",
             "--n_threads", str(threads)],
            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerError(f"llama.cpp server exited: {Path(log.name).read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise ServerError(f"llama.cpp server did not start within {timeout_s:.0f} s") from None
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        Path(log.name).unlink(missing_ok=True)
