"""Train a student: ``accelerate launch [--config_file configs/accelerate/cpu.yaml] distill.py
--config configs/distill/RECIPE.yaml [--resume] [-v] [section.key=value ...]``.

A thin entry: parse the arguments, load the config, call :func:`students.trainer.train`.
Any :class:`~workbench.errors.WorkbenchError` ends the run with one ``error: ...`` line
and its exit code; other libraries' logs, warnings and progress bars only show with -v.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from workbench.config import DistillConfig, load_config
from workbench.errors import WorkbenchError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="distillation recipe (YAML)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in train.output_dir from its last epoch")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and other libraries' logs, warnings and progress bars")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    # Progress is logged by the main process only (RANK is set by the distributed launchers).
    main_process = os.environ.get("RANK", "0") == "0"
    level = logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level if main_process else logging.WARNING, datefmt="%H:%M:%S",
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from workbench.cli.logs import quiet_libraries

    quiet_libraries(args.verbose)
    log = logging.getLogger("distill")

    from students.trainer import train

    try:
        cfg = load_config(DistillConfig, args.config, args.overrides)
        best = train(cfg, resume=args.resume)
    except WorkbenchError as e:
        log.debug("traceback of the error below", exc_info=e)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    log.info("best checkpoint: %s", best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
