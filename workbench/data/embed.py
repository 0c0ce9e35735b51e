"""Frame embeddings from a local transformers image encoder (``media.image_encoder``).

The directory holds a model ``AutoModel`` loads (a CLIP or SigLIP model or its vision
tower) and the processor ``AutoImageProcessor`` loads. Each clip's frames become an
``(N, d)`` sequence: the model's image features where it has ``get_image_features``,
else its pooled output (the mean of the last hidden state when it has none).
Embeddings are stored per clip and encoder, so a rerun does not recompute them.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from workbench.config.media import MediaConfig
from workbench.data.arrays import READ_ERRORS, check_npy
from workbench.data.schema import DataError
from workbench.io import atomic_write_bytes


def encoder_id(path: str) -> str:
    """Identity of an encoder directory: its config and the sizes of its files."""
    p = Path(path)
    h = hashlib.sha256()
    for f in sorted(p.iterdir()):
        if f.is_file():
            h.update(f"{f.name}:{f.stat().st_size}\n".encode())
            if f.suffix == ".json":
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _features(model, pixel_values):
    import torch

    if hasattr(model, "get_image_features"):
        out = model.get_image_features(pixel_values=pixel_values)
    else:
        out = model(pixel_values=pixel_values)
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is not None:
        return pooled
    return out.last_hidden_state.mean(dim=1)


def load_encoder(path: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoImageProcessor, AutoModel

    p = Path(path)
    if not (p / "config.json").is_file():
        raise DataError(f"media.image_encoder={path!r} is not a transformers model directory "
                        "(no config.json); point it at a saved CLIP/SigLIP model or vision tower")
    try:
        processor = AutoImageProcessor.from_pretrained(str(p))
    except (OSError, ValueError) as e:
        raise DataError(f"media.image_encoder={path!r}: no image processor there ({e}); save "
                        "one with processor.save_pretrained(dir)") from None
    model = AutoModel.from_pretrained(str(p)).to(device).eval()
    return model, processor


def _load_embedding(path: Path, sid: str) -> np.ndarray:
    """A clip's frame embeddings stored by an earlier run."""
    fix = f"delete {path} and rerun to embed the clip's frames again"
    try:
        check_npy(path, fix)
        return np.load(path, allow_pickle=False)
    except DataError:  # a ValueError, but already the message to show
        raise
    except READ_ERRORS as e:
        raise DataError(f"{path}: the stored frame embeddings of clip {sid!r} cannot be read "
                        f"({type(e).__name__}: {e}); {fix}") from None


def embed_clips(records: list[dict[str, Any]], mcfg: MediaConfig, media_dir: Path) -> dict[str, np.ndarray]:
    """clip key -> ``(N, d)`` float32 embeddings of that clip's frames."""
    import torch
    from PIL import Image

    enc = encoder_id(mcfg.image_encoder)
    out: dict[str, np.ndarray] = {}
    todo = []
    for rec in records:
        if not rec["frames"]:
            continue
        path = media_dir / "clips" / f"{rec['key']}.emb-{enc}.npy"
        if path.is_file():
            out[rec["key"]] = _load_embedding(path, rec["id"])
        else:
            todo.append((rec, path))
    if not todo:
        return out
    model, processor = load_encoder(mcfg.image_encoder, mcfg.device)
    flat = [(i, media_dir / "frames" / f) for i, (rec, _) in enumerate(todo) for f in rec["frames"]]
    vecs: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(flat), mcfg.encoder_batch):
            chunk = flat[start:start + mcfg.encoder_batch]
            images = []
            for _, f in chunk:
                with Image.open(f) as im:
                    images.append(im.convert("RGB"))
            pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
            feats = _features(model, pixel_values.to(mcfg.device))
            vecs.extend(feats.float().cpu().numpy())
    owner = np.array([i for i, _ in flat])
    mat = np.stack(vecs).astype(np.float32)
    for i, (rec, path) in enumerate(todo):
        emb = mat[owner == i]
        buf = io.BytesIO()
        np.save(buf, emb)
        atomic_write_bytes(path, buf.getvalue())
        out[rec["key"]] = emb
    return out
