"""Baselines a student must beat, fitted on the train split and reported on another split.

:func:`run_baselines` gives, on ``BaselineOptions.split`` of the data (after its
``data.subset``, so a small-data subset trains them on the same train samples a recipe
would):

- **majority class** of train (classification) / **train mean** (regression): one
  constant prediction for every sample;
- a **linear probe** over the student's own text encoder, frozen (``encoder``, e.g. a
  recipe's ``student.text_encoder``, with its ``max_text_len``): the token states
  mean-pooled over real tokens (:class:`students.encoders.TextEncoder`, as the student
  pools), standardised, then logistic regression (classes) or ridge regression (scores);
- where the data has audio / vision features and ``features`` is on, the same probe over
  text + features: each modality's utterance vector (a sequence: the mean of its real
  frames; absent: zeros) and a 0/1 column saying whether it is there.

The probe's regularisation (``C`` / ``alpha``, from :data:`C_GRID` / :data:`ALPHA_GRID`) is
chosen by ``folds``-fold cross-validation on train only (stratified, scored by weighted F1
for classes; mean absolute error for scores), the scaler fitted inside each fold; the split
reported on is never seen before the final predictions. Metrics are
:func:`workbench.metrics.compute_metrics` of the dataset's metric set, as ``workbench
eval`` computes them. The result is a :class:`eval.references.ReferenceTable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eval.data import labels_of, load_data, split_samples, train_samples
from eval.options import EvalError, resolve_device
from eval.references import ReferenceTable, data_summary
from workbench.config import DataConfig, StudentConfig
from workbench.data import MSADataset
from workbench.data.schema import Sample
from workbench.data.store import DataInfo
from workbench.metrics import compute_metrics

log = logging.getLogger(__name__)

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
"""Inverse regularisation strengths the classification probe chooses from."""
ALPHA_GRID = tuple(float(a) for a in np.logspace(-2, 5, 15))
"""Ridge penalties the regression probe chooses from."""


@dataclass
class BaselineOptions:
    """How to compute the baselines (the ``workbench baselines`` options)."""

    split: str = "test"
    """Split reported on (the baselines are fitted on ``train``)."""
    encoder: str = "minilm"
    """The probe's text encoder, frozen: ``minilm`` or a local transformers directory."""
    max_text_len: int = 64
    """Tokens the encoder reads per text (the student's ``max_text_len``)."""
    features: bool = True
    """Also probe text + the audio / vision features where the data has them."""
    folds: int = 5
    """Cross-validation folds on train choosing the probe's regularisation."""
    seed: int = 0
    """Seed of the folds' shuffle."""
    batch_size: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.split == "train":
            raise EvalError("--split train: the baselines are fitted on train; report them "
                            "on valid or test")
        if self.folds < 2:
            raise EvalError(f"--folds={self.folds}: cross-validation needs at least 2 folds")
        if self.max_text_len < 8:
            raise EvalError(f"--max-text-len={self.max_text_len}: use at least 8 tokens")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size={self.batch_size}: use at least 1")

    @classmethod
    def from_student(cls, student: StudentConfig, **kw: Any) -> BaselineOptions:
        """Options probing a recipe's text encoder at its ``max_text_len``."""
        return cls(encoder=student.text_encoder, max_text_len=student.max_text_len, **kw)


# ------------------------------------------------------------------------ inputs


def embed_texts(splits: Sequence[Sequence[str]], opts: BaselineOptions) -> list[np.ndarray]:
    """Per list of texts, its ``(N, d)`` mean-pooled token states of the frozen encoder, in
    the texts' order (length-sorted batches, as prediction runs them); one encoder load."""
    import torch

    from students.encoders import TextEncoder

    device = resolve_device(opts.device)
    enc = TextEncoder(opts.encoder, mode="frozen", device=device)
    outs = []
    for texts in splits:
        order = np.argsort([len(t or "") for t in texts], kind="stable")
        out = np.zeros((len(texts), enc.out_dim), dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, len(texts), opts.batch_size):
                idx = order[i:i + opts.batch_size]
                tok = enc.tokenizer([texts[j] or "" for j in idx], padding=True,
                                    truncation=True, max_length=opts.max_text_len,
                                    return_tensors="pt").to(device)
                pooled = enc(tok["input_ids"], tok["attention_mask"],
                             tok.get("token_type_ids")).pooled
                out[idx] = pooled.float().cpu().numpy()
        outs.append(out)
    return outs


def feature_modalities(info: DataInfo) -> list[str]:
    """The feature modalities the data carries (audio / vision), in that order."""
    return [m for m in ("audio", "vision") if m in info.feature_dims and m in info.modalities]


def _utterance_vector(s: Sample, m: str, dim: int) -> tuple[np.ndarray, float]:
    feat = s.feature(m)
    if feat is None or feat.size == 0:
        return np.zeros(dim, dtype=np.float32), 0.0
    if feat.ndim == 1:
        return feat.astype(np.float32), 1.0
    n = s.length(m)
    n = feat.shape[0] if n is None else int(n)
    if n <= 0:
        return np.zeros(dim, dtype=np.float32), 0.0
    return feat[:n].astype(np.float32).mean(axis=0), 1.0


def feature_matrix(samples: Sequence[Sample], info: DataInfo, modalities: Sequence[str]
                   ) -> np.ndarray:
    """``(N, sum(d) + len(modalities))``: per modality its utterance vector (a sequence's
    mean over real frames; zeros when absent) and a 0/1 presence column."""
    cols = []
    for m in modalities:
        pairs = [_utterance_vector(s, m, info.feature_dims[m]) for s in samples]
        cols.append(np.stack([v for v, _ in pairs]))
        cols.append(np.array([[p] for _, p in pairs], dtype=np.float32))
    return np.concatenate(cols, axis=1)


# ------------------------------------------------------------------------ models


def _folds(y: np.ndarray, classification: bool, opts: BaselineOptions):
    from sklearn.model_selection import KFold, StratifiedKFold

    if classification:
        smallest = int(np.bincount(y)[np.unique(y)].min())
        k = max(2, min(opts.folds, smallest))
        return StratifiedKFold(k, shuffle=True, random_state=opts.seed), k
    if len(y) < opts.folds:
        raise EvalError(f"the train split has {len(y)} samples, fewer than --folds="
                        f"{opts.folds}; use a larger train subset or fewer folds")
    return KFold(opts.folds, shuffle=True, random_state=opts.seed), opts.folds


def fit_probe(x: np.ndarray, y: np.ndarray, classification: bool, opts: BaselineOptions
              ) -> tuple[Any, dict[str, Any]]:
    """A standardised linear model fitted on ``(x, y)``, its regularisation chosen by
    cross-validation on them; returns ``(model, what was chosen and how)``."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if classification and len(np.unique(y)) < 2:
        raise EvalError("the train split has one class only; a probe needs at least two")
    cv, k = _folds(y, classification, opts)
    if classification:
        pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        grid, param, scoring = {"logisticregression__C": list(C_GRID)}, "C", "f1_weighted"
    else:
        pipe = make_pipeline(StandardScaler(), Ridge())
        grid, param, scoring = {"ridge__alpha": list(ALPHA_GRID)}, "alpha", \
            "neg_mean_absolute_error"
    search = GridSearchCV(pipe, grid, cv=cv, scoring=scoring).fit(x, y)
    chosen = float(next(iter(search.best_params_.values())))
    how = {"model": "logistic regression" if classification else "ridge regression",
           param: chosen, "grid": next(iter(grid.values())), "cv_folds": k,
           "cv_scoring": scoring, "cv_score": float(search.best_score_),
           "standardised": True, "dim": int(x.shape[1])}
    return search.best_estimator_, how


# ------------------------------------------------------------------------ the rows


def _majority_row(info: DataInfo, y_tr: np.ndarray, y_ev: np.ndarray
                  ) -> tuple[str, dict[str, float], dict[str, Any]]:
    if info.task == "classification":
        k = int(np.bincount(y_tr, minlength=len(info.class_names)).argmax())
        preds = np.full(len(y_ev), k, dtype=np.int64)
        about = {"kind": "majority", "class": info.class_names[k], "class_id": k}
        name = "majority class"
    else:
        mean = float(np.mean(y_tr))
        preds = np.full(len(y_ev), mean, dtype=np.float64)
        about = {"kind": "mean", "value": mean}
        name = "train mean"
    return name, compute_metrics(info.metric_set, preds, y_ev), about


def encoder_label(encoder: str) -> str:
    """How a row names the encoder: ``minilm`` or the directory's name."""
    return encoder if encoder == "minilm" else Path(encoder).name


def _probe_row(x_tr: np.ndarray, y_tr: np.ndarray, x_ev: np.ndarray, y_ev: np.ndarray,
               info: DataInfo, opts: BaselineOptions, inputs: list[str]
               ) -> tuple[str, dict[str, float], dict[str, Any]]:
    classification = info.task == "classification"
    t0 = time.perf_counter()
    model, how = fit_probe(x_tr, y_tr, classification, opts)
    preds = model.predict(x_ev)
    metrics = compute_metrics(info.metric_set, preds, y_ev)
    name = f"probe ({'+'.join([encoder_label(opts.encoder), *inputs[1:]])})"
    about = {"kind": "probe", "encoder": opts.encoder, "max_text_len": opts.max_text_len,
             "inputs": inputs, **how, "fit_seconds": time.perf_counter() - t0}
    log.info("%s: %s=%g chosen by %d-fold CV on train", name, "C" if classification else
             "alpha", how.get("C", how.get("alpha")), how["cv_folds"])
    return name, metrics, about


def run_baselines(data: DataConfig, opts: BaselineOptions,
                  datasets: dict[str, MSADataset] | None = None) -> ReferenceTable:
    """The baselines of the module docstring on ``opts.split`` of ``data``.

    Raises :class:`EvalError` for a missing split, :class:`workbench.data.DataError` for an
    unlabelled one, :class:`workbench.models.ModelNotFound` for an encoder not here."""
    t0 = time.perf_counter()
    ds = load_data(data, "DATA", Path("."), datasets)
    info = ds.info
    train = train_samples(ds, "the baselines are fitted on it")
    evaluated = split_samples(ds, opts.split, info)
    y_tr, y_ev = labels_of(train, info), labels_of(evaluated, info)
    rows: dict[str, dict[str, float]] = {}
    about: dict[str, dict[str, Any]] = {}
    name, metrics, what = _majority_row(info, y_tr, y_ev)
    rows[name], about[name] = metrics, what
    log.info("embedding %d train + %d %s texts with %s (frozen)", len(train), len(evaluated),
             opts.split, opts.encoder)
    t_emb = time.perf_counter()
    x_tr, x_ev = embed_texts([[s.text for s in train], [s.text for s in evaluated]], opts)
    embed_s = time.perf_counter() - t_emb
    probes = [(["text"], x_tr, x_ev)]
    mods = feature_modalities(info) if opts.features else []
    if mods:
        probes.append((["text", *mods],
                       np.concatenate([x_tr, feature_matrix(train, info, mods)], axis=1),
                       np.concatenate([x_ev, feature_matrix(evaluated, info, mods)], axis=1)))
    for inputs, a, b in probes:
        name, metrics, what = _probe_row(a, y_tr, b, y_ev, info, opts, inputs)
        rows[name], about[name] = metrics, what
    meta = {"n_train": len(train), "embed_seconds": embed_s,
            "seconds": time.perf_counter() - t0, "device": str(resolve_device(opts.device))}
    return ReferenceTable(title="baselines", metric_set=info.metric_set, split=opts.split,
                          n_samples=len(evaluated), data=data_summary(data, ds, evaluated),
                          rows=rows, about=about, meta=meta)
