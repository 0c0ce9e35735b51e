"""The dataset card (``README.md``) of a cache exported with ``workbench cache export
--format hf``: the Hugging Face dataset-card format, YAML front matter then Markdown.

Every figure is read from the cache itself: the job specs (teacher model and revision,
backend, template name, version and hash, decoding, data name and fingerprint), and
:meth:`~workbench.cache.store.CacheStore.status` per job (keys, counts per status,
attempts, tokens, spend); the row counts per split are those of the exported files. The
cache records no license, so the card says ``license: unknown``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import yaml

COLUMNS: dict[str, str] = {
    "job": "Cache job id: the hash of the job spec (template, teacher, decoding, data "
           "fingerprint); every key of the job is made from it.",
    "template": "Prompt template name.",
    "teacher": "Teacher model id as it enters the keys (name@revision).",
    "data_fingerprint": "Content hash of the dataset the prompts were rendered from.",
    "sample_id": "The dataset sample's id (join on it with the dataset of that fingerprint).",
    "split": "The sample's split in that dataset.",
    "key": "Cache key: a hash of the sample's content, the template text, the teacher and "
           "the decoding parameters.",
    "status": "`ok`, an error kind (e.g. `timeout`, `no_label`, `bad_response`), or "
              "`pending` (asked for, no answer stored yet).",
    "error": "The error message of an error row (secrets scrubbed, cut to 300 characters); "
             "empty otherwise.",
    "raw_text": "The teacher's answer text as returned (secrets scrubbed; may be cut, see "
                "the cache's meta.text_cut).",
    "description": "The description parsed from the answer (description templates).",
    "soft_probs": "Soft label: probabilities over the label bins, read from the answer's "
                  "token log-probabilities.",
    "soft_values": "The label bins' values (e.g. -3..3 for a sentiment score).",
    "soft_expected": "The soft label's expected value (sum of probs x values).",
    "soft_entropy": "Entropy of the soft label (nats).",
    "soft_off_label_mass": "Probability mass the teacher put on tokens that are no label "
                           "(renormalised away).",
    "tokens_in": "Prompt tokens of the current answer.",
    "tokens_out": "Completion tokens of the current answer.",
    "latency_s": "Seconds the current answer took.",
    "cost_usd": "USD of the current answer (the spend above also counts failed and "
                "duplicate attempts).",
}
"""What each exported column means (one row per job and sample:
:meth:`~workbench.cache.store.CacheStore.export_rows`)."""

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
OUTPUT_TASKS = {"soft_label": "text-classification", "description": "text-generation",
                "text": "text-generation"}
"""The Hub task category of each job output kind."""


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bin of ``n`` rows."""
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>10M"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def front_matter(jobs: Sequence[dict[str, Any]], split_files: dict[str, str], rows: int
                 ) -> dict[str, Any]:
    """The card's YAML header; ``split_files``: split -> data file (relative path)."""
    tasks = sorted({OUTPUT_TASKS.get(j.get("output"), "text-classification") for j in jobs}
                   or {"text-classification"})
    return {
        "license": "unknown",
        "task_categories": tasks,
        "tags": ["sentiment-analysis", "multimodal", "knowledge-distillation",
                 "teacher-outputs", "soft-labels"],
        "size_categories": [size_category(rows)],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": p} for s, p in split_files.items()]}],
    }


def dataset_card(cache: str, jobs: Sequence[dict[str, Any]],
                 status: dict[str, dict[str, Any]], split_rows: dict[str, int],
                 split_files: dict[str, str], columns: dict[str, str]) -> str:
    """The card's text: ``jobs`` (the specs exported), ``status`` (job id -> its
    :meth:`~workbench.cache.store.CacheStore.status`), ``split_rows`` / ``split_files``
    (rows and file per split), ``columns`` (name -> Arrow type)."""
    rows = sum(split_rows.values())
    head = yaml.safe_dump(front_matter(jobs, split_files, rows), sort_keys=False,
                          allow_unicode=True)
    lines = [f"# Teacher outputs of cache `{cache}`", "",
             "What teacher models answered for each sample of a dataset, as cached by "
             "`workbench cache run` (MSA workbench) and exported by `workbench cache export "
             "--format hf`: one row per cache job and sample, with the answer that is current "
             "for its key. The dataset's own texts, media and gold labels are not in it; join "
             "on `sample_id` with the dataset whose fingerprint is given.", "",
             "```python", "import datasets", "ds = datasets.load_dataset(\"path/to/this/folder\")",
             "```", "",
             "Rows per split: " + ", ".join(f"{s} {n}" for s, n in split_rows.items())
             + f" ({rows} in all).", "", "## Jobs", ""]
    for j in jobs:
        st = status[j["job"]]
        errs = ", ".join(f"{k} {v}" for k, v in st["errors"].items()) or "none"
        lines += [
            f"### Job `{j['job']}`", "",
            f"- **Teacher model**: `{j.get('teacher')}` (backend `{j.get('backend')}`)",
            f"- **Template**: `{j.get('template')}` version {j.get('template_version')} "
            f"(text hash `{j.get('template_hash')}`), output `{j.get('output')}`; "
            + ("the prompt showed the gold label (train rows only may be distilled from)"
               if j.get("uses_gold_label") else "the prompt did not show the gold label"),
            f"- **Decoding**: `{json.dumps(j.get('decoding'), sort_keys=True)}`"
            + (f"; prompting `{json.dumps(j.get('prompting'), sort_keys=True)}`"
               if j.get("prompting") else ""),
            f"- **Data**: `{j.get('data_name')}`, fingerprint `{j.get('data_fingerprint')}`",
            f"- **Keys**: {st['keys']}: ok {st['ok']}, errors {errs}, pending {st['pending']}",
            f"- **Attempts**: {st['attempts']} ({st['retries']} retries); tokens "
            f"{st['tokens_in']} in, {st['tokens_out']} out; mean latency of ok answers "
            f"{st['mean_latency_s']:.3f} s",
            f"- **Spend**: ${st['cost_usd']:.6f} (every attempt, failed and duplicate ones "
            "included)", ""]
    if not jobs:
        lines += ["The cache holds no job.", ""]
    lines += ["## Counts per status", "",
              "Keys per status (a key may serve several samples with the same content).", "",
              "| job | status | keys |", "|---|---|---:|"]
    for j in jobs:
        st = status[j["job"]]
        counts = {"ok": st["ok"], **st["errors"], "pending": st["pending"]}
        lines += [f"| `{j['job']}` | {_cell(k)} | {v} |" for k, v in counts.items() if v]
    lines += ["", "## Columns", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{name}` | {_cell(typ)} | {_cell(COLUMNS.get(name, 'not described'))} |"
              for name, typ in columns.items()]
    lines += ["", "## License and limits", "",
              "- License: not recorded in the cache (`unknown`). The answers are a model's "
              "output on the dataset's samples: the dataset's and the teacher model's terms "
              "apply.",
              "- Answers are model-generated: soft labels and descriptions carry the "
              "teacher's biases and errors. Error rows and pending keys have no answer.",
              "- Secrets (API keys and token-shaped strings) were scrubbed from stored texts."]
    return f"---\n{head}---\n\n" + "\n".join(lines).rstrip("\n") + "\n"

