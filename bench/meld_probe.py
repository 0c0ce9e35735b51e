"""MELD baselines a student should beat: the majority class, and a frozen-encoder linear
probe (MiniLM-L6 mean-pooled token states + logistic regression), trained on a seeded train
subset (``data.subset``, the same draw a recipe with ``data.subset.train=N`` uses) and
reported on the full test split with the workbench's classification metrics.

    python bench/meld_probe.py                      # train subset 1500, seed 0, 1 thread
    python bench/meld_probe.py --train 0            # the full train split (9,989)

Needs the shared MELD folder (../shared/data/meld) and the models extra; exits 0 with a
note when either is absent. Takes a few minutes on one CPU thread (excluded from
``make bench``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workbench.config import DataConfig, load_config  # noqa: E402
from workbench.data import load_dataset  # noqa: E402
from workbench.metrics import classification_metrics  # noqa: E402
from workbench.models import ModelNotFound, minilm_path  # noqa: E402

MELD = ROOT / "configs" / "data" / "meld.yaml"


@torch.no_grad()
def embed(texts: list[str], model, tok, batch: int = 64, max_len: int = 64) -> np.ndarray:
    """Mean-pooled last hidden states over real tokens, (N, d)."""
    out = []
    order = np.argsort([len(t) for t in texts])  # length-sorted batches pad less
    for i in range(0, len(texts), batch):
        idx = order[i:i + batch]
        enc = tok([texts[j] for j in idx], padding=True, truncation=True, max_length=max_len,
                  return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        out.append(((h * m).sum(1) / m.sum(1)).numpy())
    emb = np.concatenate(out)
    back = np.empty_like(emb)
    back[order] = emb
    return back


def baselines(train: int = 1500, seed: int = 0, threads: int = 1) -> dict | None:
    """Majority class and frozen-encoder probe on MELD test, trained on a seeded train
    subset of ``train`` lines (0: the whole split). ``None`` (with a note printed) when
    MELD or the encoder is absent; else the rows' classification metrics and a summary."""
    torch.set_num_threads(threads)
    cfg = load_config(DataConfig, MELD, [f"subset_seed={seed}"]
                      + ([f"subset={{train: {train}}}"] if train else []))
    if not (Path(cfg.path) / "train_sent_emo.csv").is_file():
        print(f"skipped: MELD is not at {cfg.path} (see configs/data/meld.yaml)")
        return None
    try:
        enc_dir = minilm_path()
    except ModelNotFound as e:
        print(f"skipped: {e}")
        return None
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    ds = load_dataset(cfg)
    train_s, test = ds.samples("train"), ds.samples("test")
    y_tr = np.array([s.label_class for s in train_s])
    y_te = np.array([s.label_class for s in test])
    k = len(ds.info.class_names)
    rows = {}
    majority = np.bincount(y_tr, minlength=k).argmax()
    rows["majority class (of train)"] = classification_metrics(
        np.eye(k)[np.full(len(y_te), majority)], y_te)
    tok = AutoTokenizer.from_pretrained(enc_dir)
    model = AutoModel.from_pretrained(enc_dir).eval()
    t0 = time.perf_counter()
    x_tr = embed([s.text for s in train_s], model, tok)
    x_te = embed([s.text for s in test], model, tok)
    enc_s = time.perf_counter() - t0
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(x_tr, y_tr)
    rows["frozen MiniLM mean-pooled + logistic regression"] = classification_metrics(
        clf.predict_log_proba(x_te), y_te)
    summary = (f"MELD test ({len(test)} lines), train {'subset ' if train else ''}{len(train_s)} "
               f"(seed {seed}); encoding {len(train_s) + len(test)} lines took {enc_s:.0f} s on "
               f"{threads} thread(s)")
    return {"rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=1500, help="train subset size (0: all)")
    ap.add_argument("--seed", type=int, default=0, help="data.subset_seed")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    res = baselines(args.train, args.seed, args.threads)
    if res is None:
        return 0
    print(res["summary"])
    print("| system | acc | weighted F1 | macro F1 |")
    print("|---|---|---|---|")
    for name, m in res["rows"].items():
        print(f"| {name} | {100 * m['acc']:.1f} | {100 * m['f1_weighted']:.1f} | "
              f"{100 * m['f1_macro']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
