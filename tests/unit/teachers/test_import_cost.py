"""Choosing a backend loads no torch: the backend dict imports ``hf_vision`` (and so
``hf_local`` and ``scoring``) to tell a vision model from a text one, and the API backends
import ``scoring``; torch loads only when a local model is loaded or run."""

import subprocess
import sys


def test_teacher_modules_import_without_torch():
    code = ("import sys, teachers, teachers.hf_vision, teachers.hf_local, teachers.scoring, "
            "teachers.openai_compat, teachers.job, teachers.run; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
