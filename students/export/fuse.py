"""The text encoder of ``model.onnx`` fused at the kernel level: ONNX Runtime's transformer
optimizer (``onnxruntime.transformers.optimizer.optimize_model``, ``model_type="bert"``)
turns each BERT layer into one ``Attention``, two ``SkipLayerNormalization`` and one
``BiasGelu`` node, and the embeddings into ``EmbedLayerNormalization``.

The optimizer needs ONNX Runtime's symbolic shape inference over the whole graph, which
fails on the student's other parts (the frame and fusion attention's reshapes), and then
fuses nothing but Gelu. :func:`fuse_text_encoder` therefore cuts the text encoder out (the
nodes from ``input_ids`` / ``attention_mask`` / ``token_type_ids`` to the last encoder
layer's output), fuses that subgraph alone, and splices it back in place of the nodes it
replaced. The caller checks the fused graph against the unfused one before serving it.

One fusion is undone: ONNX Runtime's CPU ``SkipLayerNormalization`` kernel (1.32) ran
4.5-5.8x slower than the ``Add`` + ``LayerNormalization`` it replaces (a (1, 23, 384)
input: 66 against 16 us; (1, 640, 384): 1.72 against 0.30 ms; one thread, the Xeon of
docs/serving.md), a sixth of the student's batch-1 time. :func:`split_skip_layer_norm`
writes each back as its ``Add`` nodes and a ``LayerNormalization``, and sessions that serve
the graph turn off the runtime optimizer that would fuse them again
(:data:`DISABLED_OPTIMIZERS`).
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# transformers model types whose layers follow BERT's (what model_type="bert" matches)
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "mpnet")
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention",
             "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")
PREFIX = "text_fused/"
DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
"""ONNX Runtime graph optimizers a session serving a student turns off
(``InferenceSession(..., disabled_optimizers=...)``): the module docstring says why."""


def text_encoder_output(graph: Any, scope: str = "/model/text/") -> str | None:
    """The tensor that holds the text encoder's last hidden state: the output of the last
    ``LayerNormalization`` of an encoder layer under ``scope`` (names as the TorchScript
    exporter writes them), or None where there is none."""
    last = None
    for node in graph.node:
        if (node.op_type == "LayerNormalization" and node.name.startswith(scope)
                and "/encoder/layer." in node.name):
            last = node.output[0]
    return last


def op_counts(model: Any) -> dict[str, int]:
    """Node count per op type of an ONNX model, largest first."""
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def fuse_text_encoder(model: Any, num_heads: int, hidden_size: int) -> tuple[Any, dict[str, Any]]:
    """``model`` (an ``onnx.ModelProto`` exported with eager attention) with its text
    encoder fused by ONNX Runtime's BERT optimizer; returns the new model and what was
    fused (``{"fused": {op: count}}``, plus ``"reason"`` where nothing was). The input
    model is not changed."""
    import onnx
    from onnx.utils import Extractor
    from onnxruntime.transformers.optimizer import optimize_model

    from students.export.common import quiet_loggers

    graph = model.graph
    boundary = text_encoder_output(graph)
    if boundary is None:
        return model, {"fused": {}, "reason": "no BERT-style encoder layer found in the graph"}
    inputs = [i.name for i in graph.input if i.name in TEXT_INPUTS]
    known = onnx.ModelProto()
    known.CopyFrom(model)
    # ONNX's shape inference cannot follow transformers' mask code to the encoder's end
    known.graph.value_info.append(onnx.helper.make_tensor_value_info(
        boundary, onnx.TensorProto.FLOAT, ["batch", "tokens", hidden_size]))
    sub = Extractor(known).extract_model(inputs, [boundary])
    with tempfile.TemporaryDirectory() as tmp, quiet_loggers(
            "onnxruntime", "fusion_base", "onnx_model", "onnx_model_bert", "fusion_utils",
            "shape_infer_helper", "fusion_attention", "fusion_skiplayernorm"):
        src = Path(tmp) / "text.onnx"
        onnx.save(sub, str(src))
        optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                   hidden_size=hidden_size, opt_level=0)
    fused_sub, split = split_skip_layer_norm(optimized.model)
    fused = {k: v for k, v in op_counts(fused_sub).items() if k in FUSED_OPS}
    if not fused.get("Attention") and not fused.get("MultiHeadAttention"):
        return model, {"fused": fused, "reason": "ONNX Runtime's optimizer found no attention "
                                                 "to fuse in the text encoder"}
    record = {"fused": fused, "split": {"SkipLayerNormalization": split}} if split else {"fused": fused}
    return _splice(model, sub, fused_sub, inputs, boundary), record


def split_skip_layer_norm(model: Any) -> tuple[Any, int]:
    """``model`` with every ``SkipLayerNormalization`` (com.microsoft) written back as
    ``Add(input, skip)`` (``+ bias`` where it has one) and a ``LayerNormalization`` with its
    gamma, beta and epsilon (module docstring: why); the number split. The sum output, where
    a node has one in use, is the ``Add``'s. ``model`` is not changed."""
    import onnx
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes, n_split = [], 0
    for node in out.graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        n_split += 1
        ins = list(node.input) + [""] * (5 - len(node.input))
        x, skip, gamma, beta, bias = ins[:5]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = node.output[3] if len(node.output) > 3 and node.output[3] else f"{node.name}/sum"
        name = node.name or f"skip_ln_{n_split}"
        if bias:
            nodes.append(helper.make_node("Add", [x, skip], [f"{name}/x_skip"], name=f"{name}/add"))
            nodes.append(helper.make_node("Add", [f"{name}/x_skip", bias], [total], name=f"{name}/bias"))
        else:
            nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{name}/add"))
        nodes.append(helper.make_node("LayerNormalization", [total, gamma, *([beta] if beta else [])],
                                      [node.output[0]], name=f"{name}/ln", axis=-1, epsilon=eps))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, n_split


def _splice(model: Any, sub: Any, fused_sub: Any, inputs: list[str], boundary: str) -> Any:
    """``model`` with the nodes of ``sub`` replaced by those of ``fused_sub`` (same inputs,
    same ``boundary`` output); the fused subgraph's own tensors are prefixed so that they
    cannot collide with the rest of the graph."""
    import onnx

    keep_names = {*inputs, boundary, ""}

    def rename(name: str) -> str:
        return name if name in keep_names else PREFIX + name

    new_nodes = []
    for i, node in enumerate(fused_sub.graph.node):
        n = onnx.NodeProto()
        n.CopyFrom(node)
        n.name = f"{PREFIX}{i}/{node.name or node.op_type}"
        n.input[:] = [rename(x) for x in node.input]
        n.output[:] = [rename(x) for x in node.output]
        new_nodes.append(n)
    new_inits = []
    for init in fused_sub.graph.initializer:
        t = onnx.TensorProto()
        t.CopyFrom(init)
        t.name = rename(init.name)
        new_inits.append(t)

    replaced = {o for n in sub.graph.node for o in n.output}
    rest = [n for n in model.graph.node if not set(n.output) & replaced]
    originals = [n for n in model.graph.node if set(n.output) & replaced]
    # what the rest reads of the replaced nodes besides the boundary (a cast of the mask,
    # say) keeps its original producer; then everything unused is dropped
    candidates = new_nodes + rest + [n for n in originals if boundary not in n.output]
    producer = {o: n for n in candidates for o in n.output}
    producer.update({boundary: next(n for n in new_nodes if boundary in n.output)})
    needed: list[Any] = []
    seen: set[int] = set()
    stack = [o.name for o in model.graph.output]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        needed.append(node)
        stack.extend(x for x in node.input if x)
    nodes = _topological(needed, {i.name for i in model.graph.input}
                         | {t.name for t in model.graph.initializer} | {t.name for t in new_inits})

    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {x for n in nodes for x in n.input}
    inits = [t for t in model.graph.initializer if t.name in used] + \
        [t for t in new_inits if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    del out.graph.value_info[:]
    domains = {o.domain for o in out.opset_import}
    for o in fused_sub.opset_import:
        if o.domain not in domains:
            out.opset_import.append(o)
            domains.add(o.domain)
    for domain in sorted({n.domain for n in nodes} - domains - {""}):
        # the fused ops' domain (com.microsoft), which ONNX's checkers and ONNX Runtime's
        # quantizer look up
        out.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return out


def _topological(nodes: list[Any], available: set[str]) -> list[Any]:
    """``nodes`` ordered so that each comes after the producers of its inputs."""
    ready = set(available) | {""}
    pending = list(reversed(nodes))  # the traversal collected consumers first
    ordered = []
    while pending:
        left = []
        for node in pending:
            if all(x in ready for x in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                left.append(node)
        if len(left) == len(pending):
            raise RuntimeError(f"fused graph has a cycle or a missing input at "
                               f"{left[0].name} ({list(left[0].input)})")
        pending = left
    return ordered
