"""Cost of the architecture methods against today's student: parameters and training step
time of ``student.dashfusion``, ``student.cyin`` and ``student.midg`` (each ``.enabled=true``)
against the default gated fusion.

One training step (forward, every loss term the variant plans, backward, AdamW step) on
the same synthetic batches; rounds alternate between the variants (base, dash, ..., base,
dash, ...) so drift on a shared machine hits all of them. Prints trainable parameters
outside the text encoder, all parameters, the median ms/step and each variant's ratios to
the base. CPU, one thread, the default student width (hidden 128) over MiniLM in
``frozen`` text mode.

    python bench/method_cost.py [STEPS] [ROUNDS] [VARIANT ...]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import loadavg

VARIANTS = {
    "gated": [],
    "dashfusion": ["student.dashfusion.enabled=true"],
    "cyin": ["student.cyin.enabled=true"],
    "midg": ["student.midg.enabled=true"],
}


def main() -> None:
    import numpy as np
    import torch

    from students.batching import TrainCollator
    from students.collate import Collator, StudentItem
    from students.methods import active
    from students.model import build_student
    from students.objective import freeze_unused, plan_losses, training_losses
    from workbench.config import DataConfig, DistillConfig, load_config
    from workbench.data import load_dataset
    from workbench.data.synth import SynthSpec, write

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    names = sys.argv[3:] or ["gated", "dashfusion"]
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    manifest = write(tmp / "synth", SynthSpec(n=320, seed=0))
    ds = load_dataset(DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz")))
    samples = ds.samples("train")
    runs = {}
    for name in names:
        cfg = load_config(DistillConfig, None, ["student.text_mode=frozen",
                                                "train.batch_size=32", *VARIANTS[name]])
        plan = plan_losses(cfg.loss, cfg.data, task_kind=cfg.train.task_loss,
                           methods=active(cfg.student, cfg.train))
        torch.manual_seed(0)
        model = build_student(cfg.student, ds.info, None)
        freeze_unused(model, plan)
        model.train()
        opt = torch.optim.AdamW(model.param_groups(5e-4, 1e-4, 0.01))
        runs[name] = (cfg, plan, model, opt)
    bs = 32
    collate = TrainCollator(Collator.for_model(runs[names[0]][2]))
    batches = [collate([StudentItem(s) for s in samples[i:i + bs]])
               for i in range(0, len(samples) - bs + 1, bs)]

    def step(name, batch) -> None:
        _, plan, model, opt = runs[name]
        losses = training_losses(model, batch, plan, None, rng=np.random.default_rng(0))
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up
        for b in batches[:2]:
            step(name, b)
    for _ in range(rounds):
        for name in names:
            t0 = time.perf_counter()
            for k in range(steps):
                step(name, batches[k % len(batches)])
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    print(f"method cost: hidden=128, batch {bs}, text_mode=frozen, modalities "
          f"text+{'+'.join(runs[names[0]][2].modalities)}, {steps} steps x {rounds} rounds, "
          f"1 thread ({loadavg()})")
    base = names[0]

    def head(model) -> int:
        return sum(p.numel() for n, p in model.named_parameters()
                   if not n.startswith("text.") and p.requires_grad)

    b_params, b_ms = head(runs[base][2]), statistics.median(times[base])
    for name in names:
        model = runs[name][2]
        ms = statistics.median(times[name])
        print(f"  {name:11s} params outside the text encoder {head(model):9d} "
              f"({head(model) / b_params:.2f}x)  all {model.parameter_counts()['all'].total:9d}  "
              f"{ms:7.1f} ms/step ({ms / b_ms:.2f}x)  rounds: "
              + ", ".join(f"{t:.1f}" for t in times[name]))


if __name__ == "__main__":
    main()
