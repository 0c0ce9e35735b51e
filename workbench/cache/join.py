"""Join a dataset's samples to the teacher outputs a cache holds, with the guards that
make it safe: the cache must have been made from this very data (fingerprint), with the
template and teacher asked for; enough rows must be ok; every ok soft label must be a
distribution (finite, summing to 1); and outputs of a template that showed the gold label
are refused for valid/test samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.cache.records import TeacherOutput
from workbench.cache.store import CacheError, CacheStore


@dataclass
class TeacherView:
    """The ok outputs of one cache job for one dataset, by sample id."""

    job: dict[str, Any]
    """The job spec (template, teacher, decoding, data fingerprint, uses_gold_label)."""
    outputs: dict[str, TeacherOutput]
    """sample id -> ok output; samples without an ok answer are absent."""
    n_samples: int
    cache_dir: str

    @property
    def ok_fraction(self) -> float:
        return len(self.outputs) / self.n_samples if self.n_samples else 0.0

    def manifest(self) -> dict[str, Any]:
        """What a checkpoint records about the teacher signal it trained on."""
        return {"cache_dir": self.cache_dir, "job": self.job, "ok": len(self.outputs),
                "samples": self.n_samples}

    def cost_per_sample(self) -> dict[str, float]:
        """Mean teacher latency, tokens and cost per ok sample (for cost comparisons)."""
        outs = list(self.outputs.values())
        n = max(1, len(outs))
        return {"latency_s": sum(o.latency_s for o in outs) / n,
                "tokens_in": sum(o.tokens_in for o in outs) / n,
                "tokens_out": sum(o.tokens_out for o in outs) / n,
                "cost_usd": sum(o.cost_usd for o in outs) / n}


def _describe(jobs: list[dict[str, Any]]) -> str:
    if not jobs:
        return "it holds no jobs"
    return "it holds: " + "; ".join(
        f"{j['job']} template={j['template']} teacher={j['teacher']} "
        f"data={j['data_name']}({j['data_fingerprint']}){_prompting(j)}" for j in jobs)


def _prompting(job: dict[str, Any]) -> str:
    opts = job.get("prompting") or {}
    return "".join(f" {k}={v}" for k, v in sorted(opts.items()))


def find_job(store: CacheStore, *, template: str, data_fingerprint: str, teacher: str = "",
             job: str = "", whole_fingerprint: str = "") -> dict[str, Any]:
    """The one job matching the request, or a CacheError that lists what the cache has.

    A job made from the data itself matches; for a subset (``whole_fingerprint`` set), so
    does one made from the whole dataset it was cut from (its keys are per sample)."""
    jobs = store.jobs()
    if job:
        match = [j for j in jobs if j["job"] == job]
    else:
        match = [j for j in jobs if j["template"] == template
                 and (not teacher or j["teacher"] == teacher or j["teacher"].split("@")[0] == teacher)]
    if not match:
        raise CacheError(
            f"cache {store.dir} has no job for template={template!r}"
            f"{f' teacher={teacher!r}' if teacher else ''}{f' job={job!r}' if job else ''}; "
            f"{_describe(jobs)}. Run `workbench cache run` for it, or fix the config.")
    same_data = [j for j in match if j["data_fingerprint"] == data_fingerprint]
    if not same_data and whole_fingerprint:
        same_data = [j for j in match if j["data_fingerprint"] == whole_fingerprint]
    if not same_data:
        raise CacheError(
            f"cache {store.dir} was made from other data: the config's dataset has fingerprint "
            f"{data_fingerprint}, the cache's {template!r} jobs have "
            f"{sorted({j['data_fingerprint'] for j in match})}. Re-run the caching job on this "
            "data, or point the config at the data the cache was made from.")
    if len(same_data) > 1:
        raise CacheError(
            f"cache {store.dir} has {len(same_data)} {template!r} jobs for this data "
            f"({', '.join(j['job'] + ' teacher=' + j['teacher'] + _prompting(j) for j in same_data)}); "
            "name one by its teacher or job id")
    return same_data[0]


def teacher_view(cache_dir: str | Path, sample_splits: dict[str, str], data_fingerprint: str, *,
                 template: str, teacher: str = "", job: str = "", min_ok_fraction: float = 0.0,
                 whole_fingerprint: str = "") -> TeacherView:
    """The ok outputs of ``template`` for the samples in ``sample_splits`` (id -> split).

    Raises CacheError if the cache does not match the data, too few rows are ok, or the
    template showed the gold label and any requested sample is not a train sample.
    """
    with CacheStore(cache_dir, create=False) as store:
        spec = find_job(store, template=template, data_fingerprint=data_fingerprint,
                        teacher=teacher, job=job, whole_fingerprint=whole_fingerprint)
        if spec["uses_gold_label"]:
            leaked = sorted({sp for sp in sample_splits.values() if sp != "train"})
            if leaked:
                raise CacheError(
                    f"template {template!r} (job {spec['job']}) showed the gold label to the teacher; "
                    f"its outputs may be used for train samples only, but {leaked} samples were "
                    "asked for. Use a template without the label for valid/test.")
        keys = store.sample_keys(spec["job"])
        current = store.current(spec["job"])
    outputs: dict[str, TeacherOutput] = {}
    for sid, (_, key) in keys.items():
        if sid not in sample_splits:
            continue
        out = current.get(key)
        if out is not None and out.ok:
            outputs[sid] = out
    bad = sorted(o.key for o in outputs.values() if not _valid_soft_label(o))
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CacheError(
            f"cache {cache_dir} job {spec['job']} ({template}) has {len(bad)} ok rows whose soft "
            f"label is not a distribution (NaN, infinite or not summing to 1): keys {shown}. "
            "A workbench that did not check log-probabilities stored them; re-run the job into "
            "a new cache directory (this workbench stores such answers as bad_response errors).")
    view = TeacherView(job=spec, outputs=outputs, n_samples=len(sample_splits), cache_dir=str(cache_dir))
    if view.ok_fraction < min_ok_fraction:
        raise CacheError(
            f"cache {cache_dir} job {spec['job']} ({template}) has ok answers for "
            f"{len(outputs)} of {len(sample_splits)} samples ({view.ok_fraction:.1%}) < "
            f"min_ok_fraction={min_ok_fraction:.0%}; finish or retry the job "
            "(`workbench cache run` / `cache retry`) or lower the threshold")
    return view


def _valid_soft_label(out: TeacherOutput) -> bool:
    return out.soft_label is None or out.soft_label.is_distribution()
