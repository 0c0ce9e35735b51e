"""Per-step overhead of the conflict-aware gradient penalty (train.conflict).

One training step (forward, losses, backward, AdamW step) on the same synthetic batches,
with and without the penalty + statistical loss; rounds alternate (off, on, off, on, ...)
so drift on a shared machine hits both. Prints the median ms/step of each and their
ratio. CPU, one thread, the default student width (hidden 128) over MiniLM in ``frozen``
text mode (``lora`` as the second argument trains the adapter too: slower steps, so a
smaller ratio).

    python bench/conflict_overhead.py [STEPS] [frozen|lora] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import loadavg


def main() -> None:
    import torch

    from students.batching import TrainCollator
    from students.collate import Collator, StudentItem
    from students.methods import active
    from students.model import build_student
    from students.objective import plan_losses, training_losses
    from workbench.config import DataConfig, DistillConfig, load_config
    from workbench.data import load_dataset
    from workbench.data.synth import SynthSpec, write

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    mode = sys.argv[2] if len(sys.argv) > 2 else "frozen"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    manifest = write(tmp / "synth", SynthSpec(n=320, seed=0))
    ds = load_dataset(DataConfig(path=str(manifest), features=str(tmp / "synth/features.npz")))
    samples = ds.samples("train")
    cfg = load_config(DistillConfig, None, [f"student.text_mode={mode}", "train.batch_size=32"])
    on = load_config(DistillConfig, None, [f"student.text_mode={mode}", "train.conflict=true"])
    plans = {name: plan_losses(c.loss, c.data, task_kind=c.train.task_loss,
                               methods=active(c.student, c.train))
             for name, c in (("off", cfg), ("on", on))}
    for method in plans["on"].methods:
        method.prepare(samples, ds.info)
    torch.manual_seed(0)
    model = build_student(cfg.student, ds.info, None)
    model.train()
    collate = TrainCollator(Collator.for_model(model))
    bs = cfg.train.batch_size
    batches = [collate([StudentItem(s) for s in samples[i:i + bs]])
               for i in range(0, len(samples) - bs + 1, bs)]
    opt = torch.optim.AdamW(model.param_groups(5e-4, 1e-4, 0.01))

    def step(plan, batch) -> None:
        losses = training_losses(model, batch, plan, None)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    times: dict[str, list[float]] = {"off": [], "on": []}
    for name in ("off", "on"):  # warm-up
        for b in batches[:2]:
            step(plans[name], b)
    for _ in range(rounds):
        for name in ("off", "on"):
            t0 = time.perf_counter()
            for k in range(steps):
                step(plans[name], batches[k % len(batches)])
            times[name].append((time.perf_counter() - t0) / steps * 1e3)
    off, on = statistics.median(times["off"]), statistics.median(times["on"])
    n_shared = sum(p.numel() for p in model.shared_parameters())
    print(f"conflict penalty overhead: text_mode={mode}, hidden={cfg.student.hidden}, "
          f"batch {bs}, modalities text+{'+'.join(model.modalities)}, {n_shared} shared "
          f"weights, {steps} steps x {rounds} rounds, 1 thread ({loadavg()})")
    print(f"  without: {off:8.1f} ms/step   (rounds: {', '.join(f'{t:.1f}' for t in times['off'])})")
    print(f"  with:    {on:8.1f} ms/step   (rounds: {', '.join(f'{t:.1f}' for t in times['on'])})")
    print(f"  ratio with/without: {on / off:.2f}x")


if __name__ == "__main__":
    main()
