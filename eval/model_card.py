"""The model card ``workbench export`` writes beside the exported weights (``README.md``,
the Hugging Face model-card format: YAML front matter, then Markdown sections).

It lives in the evaluation layer because it reads what evaluation wrote: ``students``
may not import ``eval``, and the card formats metrics, robustness tables and cost lines
exactly as ``workbench eval`` prints them (:mod:`eval.report`, :mod:`eval.cost_text`). The
CLI exports first (:func:`students.export.export_checkpoint`), then writes the card with
:func:`write_model_card`.

Every figure in the card is read from a file, never computed here:

- the checkpoint: ``student.json`` (kind, text mode, modalities, parameter counts),
  ``data_info.json`` (dataset name, task, metric set, features, fingerprint),
  ``selection.json``, ``teacher_manifest.json`` (cache jobs: teacher, template and version,
  job id, splits, counts), ``config.yaml`` (read as plain data), ``versions.json``;
- the export's ``export.json`` (how the text encoder was made, ONNX, int8 accuracy);
- the checkpoint's evaluation, ``results.json`` of ``workbench eval``
  (:func:`eval.card_sources.find_eval`):
  ``leaderboard`` (complete inputs and each missing-modality pattern), ``robustness``
  (the missing-rate sweep), ``cost``, ``meta.data`` (split sizes), and the reference rows
  (``ref: ...``: majority class / train mean, linear probe, teacher) of the leaderboard
  ``workbench eval --reference`` wrote beside it.

Where a file is absent the card says so and names the command that writes it ("not
evaluated: run ``workbench eval ...``").
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

from eval.card_sources import EvalFound, run_config_data
from eval.cost_text import cost_lines
from eval.evaluate import COMPLETE
from eval.report import (
    format_cell,
    markdown_table,
    means_only,
    order_metrics,
    robustness_table,
    robustness_variants,
)
from students.checkpoint import CheckpointMeta, checkpoint_name, disk_full_named, read_meta
from students.export import read_export
from workbench.io import atomic_write_text
from workbench.metrics import METRIC_NAMES

CARD_FILE = "README.md"
TASK_TYPE = "text-classification"
"""The Hub task the card declares: the student reads an utterance's text (plus audio /
visual features) and gives a sentiment score or class."""
TAGS = ["multimodal", "sentiment-analysis", "multimodal-sentiment-analysis",
        "knowledge-distillation", "safetensors"]


def _cell(value: Any) -> str:
    """``value`` as text that stays in one Markdown table cell."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(float(value))


def front_matter(meta: CheckpointMeta, found: EvalFound, name: str) -> dict[str, Any]:
    """The card's YAML header: library, task, tags, dataset, metrics and, when evaluated,
    a ``model-index`` with the complete-input metrics exactly as ``results.json`` has them
    (non-finite values left out)."""
    info = meta.info
    tags = list(TAGS)
    if meta.student.get("text_mode") == "lora":
        tags.append("lora")
    tags += [m for m in meta.student.get("modalities") or [] if m != "text"]
    head: dict[str, Any] = {
        "library_name": "msa-workbench",
        "pipeline_tag": TASK_TYPE,
        "license": "unknown",
        "tags": tags,
        "datasets": [info.name],
        "metrics": list(METRIC_NAMES.get(info.metric_set, ())),
    }
    res = found.results
    if res is None:
        return head
    complete = (res.get("leaderboard") or {}).get(COMPLETE) or {}
    rmeta = res.get("meta") or {}
    data = rmeta.get("data") or {}
    metrics = [{"type": k, "name": k, "value": complete[k]}
               for k in order_metrics(complete, info.metric_set) if _finite(complete[k])]
    if metrics:
        head["model-index"] = [{"name": name, "results": [{
            "task": {"type": TASK_TYPE, "name": f"multimodal sentiment analysis "
                                                f"({info.task})"},
            "dataset": {"name": str(data.get("name") or info.name),
                        "type": str(data.get("name") or info.name),
                        "split": str(rmeta.get("split")),
                        "revision": str(data.get("fingerprint") or info.fingerprint)},
            "metrics": metrics,
        }]}]
    return head


def _table(rows: dict[str, dict[str, Any]], metric_set: str, first: str) -> str:
    cols = order_metrics((m for r in rows.values() for m in r), metric_set)
    return markdown_table(rows, cols, name_header=first) if cols else "(no metrics)\n"


def _enabled_methods(cfg: dict[str, Any]) -> list[tuple[str, bool]]:
    """(name, supplies the fusion) of every method the recorded config switches on."""
    from students.methods import METHODS
    from students.methods.base import Method

    out = []
    for mname, cls in METHODS.items():
        section = cfg.get(cls.section) or {}
        if isinstance(section.get(mname), dict) and section[mname].get("enabled"):
            out.append((mname, cls.build_fusion is not Method.build_fusion))
    return out


def _summary(meta: CheckpointMeta, spec: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    info, student = meta.info, cfg.get("student") or {}
    how = spec.get("text_encoder") or {}
    lines = ["## Model summary", ""]
    task = (f"regression: a sentiment score in [{info.label_range[0]:g}, "
            f"{info.label_range[1]:g}]" if info.task == "regression" else
            f"classification into {len(info.class_names)} classes "
            f"({', '.join(info.class_names)})")
    lines.append(f"- **Task**: {task}; metric set `{info.metric_set}`.")
    feats = ", ".join(f"{m} ({info.feature_kind.get(m, '?')}, d={d})"
                      for m, d in info.feature_dims.items())
    lines.append(f"- **Modalities read**: {', '.join(meta.student.get('modalities') or [])}"
                 + (f"; features: {feats}" if feats else "") + ".")
    made = {"merged_lora": "LoRA adapter merged into the base weights (PEFT "
                           "`merge_and_unload`)",
            "full": "fully fine-tuned", "frozen": "frozen (not trained)"}
    text = f"- **Text encoder**: `{student.get('text_encoder', '?')}`, " \
           f"{made.get(how.get('made_by'), how.get('made_by', '?'))}"
    if how.get("lora"):
        lora = how["lora"]
        text += (f"; LoRA r={lora.get('r')}, alpha={lora.get('alpha')} on "
                 f"{', '.join(lora.get('target_modules') or [])}")
    if how.get("dequantized_from"):
        text += f"; base dequantized from {how['dequantized_from']} to float32"
    lines.append(text + f"; at most {student.get('max_text_len', '?')} tokens per text.")
    seq = [m for m, k in info.feature_kind.items() if k == "sequence"]
    if info.feature_dims:
        lines.append("- **Audio / visual encoders**: one per feature modality, hidden size "
                     f"{student.get('hidden', '?')}"
                     + (f"; sequences ({', '.join(seq)}) through a {student.get('seq_encoder')}"
                        f" encoder of {student.get('seq_layers')} layer(s)" if seq else "")
                     + ".")
    methods = _enabled_methods(cfg)
    fusion_by = [n for n, supplies in methods if supplies]
    if fusion_by:
        lines.append(f"- **Fusion**: supplied by the method `{fusion_by[0]}`.")
    elif info.feature_dims:
        lines.append(f"- **Fusion**: gated cross-modal fusion through "
                     f"{student.get('bottleneck_tokens', '?')} learnable bottleneck tokens "
                     "per non-text modality; a missing modality is gated out.")
    else:
        lines.append("- **Fusion**: none (text only).")
    if meta.kind == "prompted":
        lines.append("- **Prompted network**: it also reads the teacher's description of "
                     "each sample (`prompt_encoder/`, frozen); give it one at inference.")
    if methods:
        lines.append(f"- **Methods on**: {', '.join(n for n, _ in methods)}.")
    if meta.bins:
        lines.append(f"- **Heads**: the task head and a bin head over the teacher's label bins "
                     f"{meta.bins}.")
    params = meta.student.get("parameters") or {}
    if params:
        total = params.get("all", {})
        lines += ["", f"Parameters as trained (`student.json`): {total.get('total', 0):,} total, "
                      f"{total.get('trainable', 0):,} trainable.", "",
                  "| component | total | trainable |", "|---|---:|---:|"]
        lines += [f"| {k} | {v.get('total', 0):,} | {v.get('trainable', 0):,} |"
                  for k, v in params.items() if k != "all"]
        lora_n = (params.get("text_encoder") or {}).get("trainable")
        if how.get("made_by") == "merged_lora" and isinstance(lora_n, int):
            lines += ["", f"The text encoder's trainable parameters ({lora_n:,}) are the LoRA "
                          "adapter's; in this export they are merged into the base weights."]
    files = ["`model.safetensors` (every weight but the text encoders)",
             "`text_encoder/` (a plain transformers directory with its tokenizer)",
             "`export.json` (the student config, the data's info, the inputs)"]
    if spec.get("kind") == "prompted":
        files.append("`prompt_encoder/` (the frozen description encoder)")
    if spec.get("onnx"):
        files.append("`model.onnx`")
    lines += ["", "Files: " + "; ".join(files) + ". Load with "
              "`students.export.load_exported(DIR)` (no PEFT needed); `workbench predict DIR` "
              "serves it."]
    int8 = spec.get("int8")
    if int8:
        acc = int8.get("accuracy")
        if acc:
            shown = [k for k in ("acc2_non0", "acc2", "acc", "mae") if k in acc["delta"]][:2]
            lines.append(f"int8 serving (dynamic int8 linear layers, CPU) on {acc['split']} "
                         f"({acc['samples']} samples): " + ", ".join(
                             f"{k} {format_cell(k, acc['float32'][k])} -> "
                             f"{format_cell(k, acc['int8'][k])}" for k in shown) + ".")
        else:
            lines.append("int8 serving is on; its accuracy change was not measured.")
        from students.export.int8 import speed_text

        lines.append(speed_text(int8.get("speed"), int8.get("cpu"), "PyTorch") + ".")
    return lines + [""]


def _data(meta: CheckpointMeta, cfg: dict[str, Any], found: EvalFound) -> list[str]:
    info = meta.info
    dcfg, train = cfg.get("data") or {}, cfg.get("train") or {}
    lines = ["## Training data", "",
             f"- **Dataset**: `{info.name}`, fingerprint `{info.fingerprint}` "
             f"(`data_info.json`), read from `{info.source}`."]
    if info.whole_fingerprint:
        lines.append(f"- **Subset**: a seeded subset ({dcfg.get('subset')}) of the dataset "
                     f"whose fingerprint is `{info.whole_fingerprint}`.")
    splits = (((found.results or {}).get("meta") or {}).get("data") or {}).get("splits")
    if splits:
        lines.append("- **Split sizes** (recorded by `workbench eval`): "
                     + ", ".join(f"{k} {v}" for k, v in splits.items()) + ".")
    else:
        lines.append("- **Split sizes**: not recorded in the checkpoint (`workbench eval` "
                     "records them; `workbench data stats DATA` shows them).")
    sel = meta.selection
    value = sel.get("value")
    shown = f"{value:.4f}" if _finite(value) else str(value)
    lines.append(f"- **Selection**: on the `{sel.get('split')}` split by `{sel.get('metric')}` "
                 f"({sel.get('mode')}) at epoch {sel.get('epoch')} = {shown} "
                 "(`selection.json`); the test split took no part in training or selection.")
    lines.append(f"- **Training**: {train.get('epochs')} epoch(s), batch size "
                 f"{train.get('batch_size')}, learning rate {train.get('lr')}, seed "
                 f"{train.get('seed')}, task loss {train.get('task_loss')} (`config.yaml`).")
    return lines + [""]


def _jobs(manifest: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    for role in ("soft_labels", "descriptions"):
        if isinstance(manifest.get(role), dict):
            out.append((prefix + role, manifest[role]))
    nested = (manifest.get("privileged") or {}).get("teacher_manifest") \
        if isinstance(manifest.get("privileged"), dict) else None
    if isinstance(nested, dict):
        out += _jobs(nested, prefix + "privileged network's ")
    return out


def _teacher(meta: CheckpointMeta, cfg: dict[str, Any]) -> list[str]:
    lines = ["## Teacher, template and cache", ""]
    jobs = _jobs(meta.teacher_manifest)
    if not jobs:
        return lines + ["None: trained on gold labels only (`teacher_manifest.json` names no "
                        "cache job).", ""]
    lines += ["From `teacher_manifest.json` (the cache jobs the run read). The job id is the "
              "hash of the job spec (template text, teacher model and revision, decoding, "
              "data fingerprint) that every cache key of the job is made from.", "",
              "| signal | teacher | template (version, hash) | job id | data fingerprint "
              "| splits | ok / samples | gold label in prompt |",
              "|---|---|---|---|---|---|---|---|"]
    for role, entry in jobs:
        job = {k: _cell(v) for k, v in (entry.get("job") or {}).items()}
        lines.append(
            f"| {role} | `{job.get('teacher')}` ({job.get('backend')}) | "
            f"`{job.get('template')}` (v{job.get('template_version')}, "
            f"`{job.get('template_hash')}`) | `{job.get('job')}` | "
            f"`{job.get('data_fingerprint')}` | {_cell(', '.join(entry.get('splits') or []))} | "
            f"{entry.get('ok')} / {entry.get('samples')} | "
            f"{'yes' if entry.get('job', {}).get('uses_gold_label') else 'no'} |")
    sig, loss = cfg.get("signals") or {}, cfg.get("loss") or {}
    lines += ["", f"Signals (`config.yaml`): cache `{sig.get('cache_dir')}`, soft-label template "
                  f"`{sig.get('soft_label_template')}`, control `{sig.get('control')}`; loss "
                  f"weights: soft-label KD {loss.get('soft_label_kd')}, expected score "
                  f"{loss.get('expected_score')}, temperature {loss.get('temperature')}."]
    return lines + [""]


def _not_evaluated(ckpt: Path, found: EvalFound, why: bool = False) -> str:
    """The card's words for a missing evaluation (``why``: with where it looked)."""
    return ("Not evaluated" + (f": {found.note}" if why else "") + f". Run `workbench eval "
            f"{ckpt}`, then export again with `--force`" + (" (or pass `--eval DIR` naming "
                                                           "its results)." if why else "."))


def _evaluation(meta: CheckpointMeta, ckpt: Path, found: EvalFound) -> list[str]:
    lines = ["## Evaluation metrics", ""]
    res = found.results
    if res is None:
        return lines + [_not_evaluated(ckpt, found, why=True), ""]
    rmeta, board = res.get("meta") or {}, res.get("leaderboard") or {}
    metric_set = res.get("metric_set") or meta.info.metric_set
    data = rmeta.get("data") or {}
    lines.append(f"From `{found.path}` (`workbench eval`): split `{rmeta.get('split')}`, "
                 f"{rmeta.get('n_samples')} samples (split fingerprint "
                 f"`{data.get('split_fingerprint')}`), on {rmeta.get('device')}. Accuracies "
                 "and F1 are ×100, MAE and Corr as is.")
    n = rmeta.get("n_samples")
    if isinstance(n, int) and n < 100:
        lines.append(f"With {n} test samples these figures are noisy.")
    rows = {"this model": board.get(COMPLETE) or {}, **found.references}
    lines += ["", _table(rows, metric_set, "model")]
    if found.references:
        lines.append(f"Reference rows from `{found.reference_path}` (the leaderboard of the "
                     "same `workbench eval` call):")
        lines += [f"- {k}: {a.get('kind')}, from `{a.get('source')}`"
                  for k, a in found.reference_about.items()]
    else:
        lines.append("No baseline was recorded with this evaluation. The majority class (train "
                     "mean for scores) and a linear probe: `workbench baselines DATA --out DIR`, "
                     f"then `workbench eval {ckpt} --reference DIR` and export again.")
    return lines + [""]


def _robustness(meta: CheckpointMeta, ckpt: Path, found: EvalFound) -> list[str]:
    lines = ["## Missing modalities", ""]
    res = found.results
    if res is None:
        return lines + [_not_evaluated(ckpt, found), ""]
    metric_set = res.get("metric_set") or meta.info.metric_set
    board = res.get("leaderboard") or {}
    patterns = {k: v for k, v in board.items() if k != COMPLETE}
    if patterns:
        lines += ["Whole modalities removed for every sample (text -> `[UNK]`, features -> "
                  "zeros), from `results.json`'s `leaderboard`:", "",
                  _table({COMPLETE: board.get(COMPLETE) or {}, **patterns}, metric_set,
                         "condition")]
    else:
        lines.append("No missing-modality pattern was evaluated (`--missing-modality none`).")
    rob = res.get("robustness")
    if rob:
        for rname, summary in robustness_variants(rob).items():
            seeds = (res.get("meta") or {}).get("seeds") or []
            lines += [f"Missing-rate sweep of `{rname}` (one rate for every modality, mean ± std "
                      f"over seeds {', '.join(map(str, seeds))}):", "",
                      robustness_table(summary, order_metrics(summary["average"], metric_set))]
    else:
        lines.append("No missing-rate sweep was run (`--missing-rates none`).")
    cyin = res.get("cyin_protocol")
    if cyin and cyin.get("fixed_subsets"):
        lines += ["", "Kept modality subsets (CyIN's protocol):", "",
                  _table(means_only(cyin["fixed_subsets"]), metric_set, "kept")]
    return lines + [""]


def _cost(ckpt: Path, found: EvalFound) -> list[str]:
    lines = ["## Student and teacher cost", ""]
    res = found.results
    if res is None:
        return lines + [_not_evaluated(ckpt, found), ""]
    cost = res.get("cost")
    if not cost:
        return lines + ["Not measured: the evaluation ran with `--no-cost`.", ""]
    lines.append("From `results.json`'s `cost` (measured by `workbench eval` on the machine "
                 "it ran on):")
    lines += [f"- {line}" for line in cost_lines(cost)]
    return lines + [""]


def _use(meta: CheckpointMeta, found: EvalFound) -> list[str]:
    info = meta.info
    feats = ", ".join(f"{m} {info.feature_kind.get(m)} d={d}" for m, d in info.feature_dims.items())
    lines = ["## Intended use and limits", "",
             f"- For research on multimodal sentiment analysis: scoring utterances like those "
             f"of `{info.name}`"
             + (f", with audio / visual features made the way its features were ({feats}); "
                "other features give meaningless outputs" if feats else "") + ".",
             "- It learned from one dataset and, where listed above, from a teacher model's "
             "soft labels and descriptions: it carries their biases and errors, and its "
             "figures hold for that dataset's test split only.",
             "- Not for decisions about people (hiring, health, credit, policing, "
             "surveillance); sentiment read from speech and faces is unreliable across "
             "speakers, cultures and recording conditions.",
             "- License: not recorded by the workbench. The text encoder's, the dataset's and "
             "the teacher's terms apply; set `license` above before sharing."]
    if found.results is None:
        lines.append("- Unevaluated: nothing above measures how well it works.")
    return lines + [""]


def model_card(export_dir: str | Path, checkpoint: str | Path, found: EvalFound) -> str:
    """The card's text for the export in ``export_dir`` of ``checkpoint`` with the
    evaluation ``found`` (:func:`find_eval`)."""
    ckpt = Path(checkpoint)
    meta = read_meta(ckpt)
    spec = read_export(export_dir)
    cfg = run_config_data(ckpt)
    name = checkpoint_name(ckpt.resolve())
    head = yaml.safe_dump(front_matter(meta, found, name), sort_keys=False,
                          allow_unicode=True)
    kind = "prompted network" if meta.kind == "prompted" else "student"
    body = [f"# {name}: multimodal sentiment {kind} ({meta.info.name})", "",
            f"A compact multimodal sentiment-analysis {kind} distilled with the MSA workbench, "
            f"exported by `workbench export` from `{ckpt.resolve()}`. Every figure here is read "
            "from the checkpoint's files, `export.json` and the evaluation's `results.json`; "
            "what was not recorded is said so.", ""]
    body += _summary(meta, spec, cfg)
    body += _data(meta, cfg, found)
    body += _teacher(meta, cfg)
    body += _evaluation(meta, ckpt, found)
    body += _robustness(meta, ckpt, found)
    body += _cost(ckpt, found)
    body += _use(meta, found)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(meta.versions.items()))
    body += ["## Provenance", "", f"Trained with {versions} (`versions.json`)."]
    return f"---\n{head}---\n\n" + "\n".join(body).rstrip("\n") + "\n"


def write_model_card(export_dir: str | Path, checkpoint: str | Path, found: EvalFound) -> Path:
    """Write :func:`model_card` as ``README.md`` in ``export_dir``; returns its path."""
    text = model_card(export_dir, checkpoint, found)
    with disk_full_named(export_dir, "the model card", f"The export in {export_dir} is "
                         "complete without it: free space on that disk and export again "
                         "with --force"):
        return atomic_write_text(Path(export_dir) / CARD_FILE, text)
