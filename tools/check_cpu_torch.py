"""Fail if a CUDA build of torch or any nvidia-* wheel got into this CPU environment."""

import sys
from importlib import metadata

import torch

bad = sorted(
    f"{d.metadata['Name']}=={d.version}"
    for d in metadata.distributions()
    if (d.metadata["Name"] or "").lower().startswith("nvidia-")
)
if torch.version.cuda:
    bad.insert(0, f"torch {torch.__version__} (CUDA {torch.version.cuda})")
if bad:
    print("CUDA packages in a CPU environment: " + ", ".join(bad), file=sys.stderr)
    print("Recreate .venv with `make clean test`; every install must use -c constraints.txt.",
          file=sys.stderr)
    sys.exit(1)
print(f"ok: torch {torch.__version__}, no nvidia-* packages")
