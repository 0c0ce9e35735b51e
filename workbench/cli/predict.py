"""``workbench predict`` (per-sample predictions) and ``workbench export`` (a standalone
merged model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from workbench.cli.common import DeviceOpt, ThreadsOpt, console, data_config, set_threads

CheckpointArg = Annotated[str, typer.Argument(
    help="Checkpoint dir, or a run dir holding checkpoint-best/.")]


def one_checkpoint(arg: str) -> Path:
    """The one checkpoint an argument names (a folder of several is an error)."""
    from students.checkpoint import CheckpointError, find_checkpoints

    found = find_checkpoints([arg])
    if len(found) > 1:
        raise CheckpointError(
            f"{arg} holds {len(found)} checkpoints ({', '.join(map(str, found[:4]))}"
            f"{', ...' if len(found) > 4 else ''}); name one checkpoint directory")
    return found[0]


def predict_cmd(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output file; the format follows the suffix: .csv (safe for "
                            "spreadsheets: text cells starting with = + - @ get a leading ') "
                            "or .jsonl (every value exact).")],
    data: Annotated[str | None, typer.Option(
        help="Data YAML or dataset path (default: the checkpoint's own data config).")] = None,
    split: Annotated[str, typer.Option(help="Split to predict, or all.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 64,
    device: DeviceOpt = "auto",
    missing_modality: Annotated[list[str] | None, typer.Option(
        help="Remove modalities for every sample: text, audio, vision or e.g. audio,vision "
             "(text -> [UNK], features -> zeros).")] = None,
    new_data: Annotated[bool, typer.Option(
        "--new-data", help="Accept data other than the training data when task, metric set "
                           "and features match (new utterances); manifest rows without a "
                           "split column are test.")] = False,
    runtime: Annotated[str, typer.Option(
        help="For an export directory: torch (float, or int8 if exported with --int8) or "
             "onnx (ONNX Runtime on model.onnx, CPU).")] = "torch",
    threads: ThreadsOpt = 0,
) -> None:
    """Per-sample predictions (score / class, classes, modality availability, label) as CSV
    or JSONL, from a checkpoint or an export directory (workbench export)."""
    from eval.predict import (
        PredictOptions,
        is_export,
        output_format,
        parse_drop,
        predict_checkpoint,
    )

    set_threads(threads)
    output_format(out)
    path = Path(checkpoint) if is_export(checkpoint) else one_checkpoint(checkpoint)
    opts = PredictOptions(split=split, batch_size=batch_size, device=device,
                          drop=parse_drop(missing_modality), new_data=new_data,
                          runtime=runtime)
    res = predict_checkpoint(path, out, opts, data_config(data, []) if data else None,
                             data_source=data or "")
    per = ", ".join(f"{k} {v}" for k, v in res.splits.items())
    dropped = f", without {'+'.join(res.dropped)}" if res.dropped else ""
    console.print(f"wrote {len(res.rows)} predictions ({per}{dropped}, {res.device}) to "
                  f"{escape(str(res.out))}")


def export_cmd(
    checkpoint: CheckpointArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Export directory (new or empty).")],
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="Also write model.onnx (needs the onnx and onnxscript packages).")] = False,
    int8: Annotated[bool, typer.Option(
        "--int8", help="Serve with dynamic int8 linear layers (CPU); the accuracy change and "
                       "the speed against float32 on the validation split are measured and "
                       "written into export.json with the CPU's features (AVX2 / AVX-512 / "
                       "VNNI / AMX).")] = False,
    fuse: Annotated[bool, typer.Option(
        "--fuse/--no-fuse", help="With --onnx: fuse the text encoder at the kernel level "
                                 "(ONNX Runtime's Attention, SkipLayerNormalization, "
                                 "BiasGelu); whether that is faster depends on the CPU: "
                                 "time both with bench/onnx_fusion.py.")] = True,
    force: Annotated[bool, typer.Option("--force", help="Replace a non-empty --out.")] = False,
    device: Annotated[str, typer.Option(
        help="Where to load the checkpoint (a bitsandbytes base may need cuda).")] = "cpu",
    eval_dir: Annotated[Path | None, typer.Option(
        "--eval", help="The checkpoint's evaluation for the model card: a results.json of "
                       "`workbench eval` or its folder (default: <run>/eval-<split>/, where "
                       "eval writes).")] = None,
) -> None:
    """Merge the LoRA adapter into the text encoder; write a standalone model (safetensors +
    export.json; load with students.export.load_exported) and its model card (README.md,
    from the checkpoint's records and its `workbench eval` results)."""
    from eval.card_sources import find_eval
    from eval.model_card import write_model_card
    from students.export import export_checkpoint, read_export

    path = one_checkpoint(checkpoint)
    found = find_eval(path, eval_dir)  # a wrong --eval is refused before anything is written
    written = export_checkpoint(path, out, onnx=onnx, overwrite=force, device=device, int8=int8,
                                fuse=fuse)
    if int8:
        from eval.export_check import measure_int8
        from students.export.int8 import speed_text

        section = measure_int8(path, written)
        for where, acc, speed in (("PyTorch", section["accuracy"], section["speed"]),
                                  ("ONNX Runtime", section["onnx_accuracy"],
                                   section["onnx_speed"])):
            if acc:
                shown = [k for k in ("acc2_non0", "acc2", "acc", "mae") if k in acc["delta"]]
                console.print(f"int8 in {where} on {acc['split']} ({acc['samples']} samples): "
                              + ", ".join(f"{k} {acc['float32'][k]:.4f} -> "
                                          f"{acc['int8'][k]:.4f}" for k in shown[:2]))
                console.print(speed_text(speed, section["cpu"], where), highlight=False)
    spec = read_export(written)
    how = spec["text_encoder"]
    what = {"merged_lora": "LoRA adapter merged into the text encoder",
            "full": "fine-tuned text encoder copied", "frozen": "frozen text encoder copied"}
    note = (f" (dequantized from {how['dequantized_from']}: float32 weights)"
            if how.get("dequantized_from") else "")
    console.print(f"exported {escape(str(path))} to {escape(str(written))}: "
                  f"{what.get(how['made_by'], how['made_by'])}{note}"
                  + (", model.onnx" if spec.get("onnx") else "")
                  + (", int8 linear layers" if spec.get("int8") else "")
                  + "; load with students.export.load_exported")
    card = write_model_card(written, path, found)
    console.print(f"model card {escape(str(card))}: "
                  + (f"evaluation from {escape(str(found.path))}" if found.results is not None
                     else f"not evaluated ({escape(found.note)})"), highlight=False)
