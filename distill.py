"""Train a student: ``accelerate launch [--config_file configs/accelerate/cpu.yaml] distill.py
--config configs/distill/RECIPE.yaml [--resume] [section.key=value ...]``.

A thin entry: parse the arguments, load the config, call :func:`students.trainer.train`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from workbench.config import ConfigError, DistillConfig, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="distillation recipe (YAML)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in train.output_dir from its last epoch")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    # Progress is logged by the main process only (RANK is set by the distributed launchers).
    main_process = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("accelerate.checkpointing", "accelerate.accelerator", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger("distill")

    from students.checkpoint import CheckpointError
    from students.trainer import TrainError, train
    from workbench.cache.store import CacheError
    from workbench.data import DataError

    try:
        cfg = load_config(DistillConfig, args.config, args.overrides)
        best = train(cfg, resume=args.resume)
    except (ConfigError, CacheError, DataError, TrainError, CheckpointError) as e:
        log.error("%s", e)
        return 2
    log.info("best checkpoint: %s", best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
