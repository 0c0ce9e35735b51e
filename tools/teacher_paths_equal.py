"""Do the teacher's fast paths give today's soft labels? One caching recipe run twice into
two fresh caches, once through ``generate`` (teacher.score_only=false,
teacher.prefix_cache=false) and once through the default score-only + shared-prefix path;
prints the number of samples compared, whether the keys agree, and max |Δp|.

    python tools/teacher_paths_equal.py [RECIPE] [OUT_DIR] [override ...]

RECIPE defaults to configs/cache/mosi_sentiment_polarity.yaml (every split of MOSI). Each
run uses one torch thread, so the two can be compared on a busy machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from teachers.run import run_cache_job
from workbench.cache.store import CacheStore
from workbench.config import CacheJobConfig, load_config


def run(recipe: str, cache: Path, overrides: list[str]) -> tuple[dict, float]:
    cfg = load_config(CacheJobConfig, recipe, [f"cache.dir={cache}", "teacher.num_threads=1",
                                               *overrides])
    t0 = time.perf_counter()
    summary = run_cache_job(cfg)
    wall = time.perf_counter() - t0
    with CacheStore(cache) as store:
        outs = store.current(summary.job_id)
    return {k: o.soft_label.probs for k, o in outs.items() if o.ok and o.soft_label}, wall


def main() -> None:
    recipe = sys.argv[1] if len(sys.argv) > 1 else "configs/cache/mosi_sentiment_polarity.yaml"
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/teacher_paths_equal")
    extra = sys.argv[3:]
    old, t_old = run(recipe, out / "generate",
                     ["teacher.score_only=false", "teacher.prefix_cache=false", *extra])
    new, t_new = run(recipe, out / "fast", extra)
    common = set(old) & set(new)
    dp = max((abs(a - b) for k in common for a, b in zip(old[k], new[k], strict=True)),
             default=float("nan"))
    print(f"{recipe}: {len(common)} soft labels compared ({len(old)} generate, {len(new)} fast; "
          f"keys {'equal' if set(old) == set(new) else 'differ'})")
    print(f"max |Δp| = {dp:.2e}; wall generate {t_old:.0f} s, fast {t_new:.0f} s "
          f"({t_old / t_new:.2f}x)")


if __name__ == "__main__":
    main()
