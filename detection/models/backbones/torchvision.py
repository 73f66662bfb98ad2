"""torchvision classification networks as backbones: their levels found from the traced graph.

No per-family table: the network is traced once with `torchvision.models.feature_extraction`'s
tracer (node names are the ones `create_feature_extractor` accepts), shapes are propagated on the
meta device (no compute), and for each stride the level is the last *cut* at that stride:
a node after which nothing computed earlier is needed any more (so the output of ResNet's
`layer1`, not the stride-1 conv inside `layer2.0` whose input still feeds the shortcut). Among the
cuts of one stride, those that close the shallowest module win (ResNet `layer1` over the stem's
`maxpool`; DenseNet `features.denseblock1` over the transition's inner conv; MobileNet block
outputs over expansion convs inside the next block).

The stem is everything up to the last cut at stride 2 (or, for a stride-4 stem such as
ConvNeXt's, the first cut at stride 4); stage k ends at the level of stride 2**(k+1).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.models.feature_extraction import NodePathTracer

from detection.models.backbones import weights as weights_lib
from detection.models.backbones.base import LEVELS

# A non-square probe tells NCHW maps (both sides shrink by the same factor) from channels-last ones.
_PROBE_H, _PROBE_W = 128, 96


@dataclass(frozen=True)
class FeatureNodes:
    """Where the levels of one architecture are, as node names for `create_feature_extractor`."""

    nodes: dict[int, str]  # level (stride 2**level) -> node name
    channels: dict[int, int]  # level -> channels of that node
    stage_of: dict[str, int]  # module or parameter path -> stage (0 stem, k stride 2**(k+1))


def _module_depth(qualnames: list[str], index: int) -> int:
    """Depth of the shallowest module whose last node is `qualnames[index]` (1 = top level)."""
    parts = qualnames[index].split(".")
    following = qualnames[index + 1] if index + 1 < len(qualnames) else ""
    for depth in range(1, len(parts) + 1):
        prefix = ".".join(parts[:depth])
        if not (following == prefix or following.startswith(prefix + ".")):
            return depth
    return len(parts)


def _tracer() -> NodePathTracer:
    # The same leaf modules and autowrapped modules as create_feature_extractor uses, so that node
    # names agree with it (torchvision.ops modules such as Conv2dNormActivation are leaves there).
    leaves = [
        obj
        for _, obj in inspect.getmembers(torchvision.ops)
        if inspect.isclass(obj) and issubclass(obj, nn.Module)
    ]
    return NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaves)


def _traced(name: str, device: str) -> tuple[fx.GraphModule, dict[fx.Node, str]]:
    with torch.device(device):
        model = torchvision.models.get_model(name, weights=None).eval()
    tracer = _tracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(1, 3, _PROBE_H, _PROBE_W, device=device))
    return gm, tracer.node_to_qualname


def _trace(name: str) -> tuple[fx.GraphModule, dict[fx.Node, str]]:
    try:
        # The meta device gives every shape without allocating or computing anything.
        return _traced(name, "meta")
    except (RuntimeError, NotImplementedError):
        # A few models initialise or run ops without meta kernels; a real probe is small.
        return _traced(name, "cpu")


def _stride(node: fx.Node) -> int | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    if shape is None or len(shape) != 4 or shape[2] == 0 or shape[3] == 0:
        return None
    if _PROBE_H % shape[2] or _PROBE_W % shape[3] or _PROBE_H // shape[2] != _PROBE_W // shape[3]:
        return None
    return _PROBE_H // shape[2]


@functools.lru_cache(maxsize=64)
def find_feature_nodes(name: str) -> FeatureNodes:
    """Level nodes, channels and stage membership for torchvision model `name` (cached)."""
    gm, qualname_of = _trace(name)
    # Parameters read through get_attr are constants, not data flowing between stages.
    nodes = [n for n in gm.graph.nodes if n.op not in ("get_attr", "output")]
    position = {n: i for i, n in enumerate(nodes)}
    qualnames = [qualname_of.get(n, n.name) for n in nodes]

    cuts: list[tuple[int, int, int]] = []  # (position, stride, depth)
    alive_until = -1
    for i, node in enumerate(nodes):
        if node.op != "placeholder" and alive_until <= i:
            stride = _stride(node)
            if stride is not None:
                cuts.append((i, stride, _module_depth(qualnames, i)))
        uses = [position[u] for u in node.users if u in position]
        alive_until = max([alive_until, i, *uses])

    def best(stride: int, first: bool = False) -> int | None:
        found = [(d, i) for i, s, d in cuts if s == stride]
        if not found:
            return None
        shallowest = min(d for d, _ in found)
        candidates = [i for d, i in found if d == shallowest]
        return candidates[0] if first else candidates[-1]

    level_pos = {level: best(2**level) for level in LEVELS}
    missing = [2**level for level, p in level_pos.items() if p is None]
    if missing:
        raise ValueError(
            f"torchvision model {name!r} has no feature map at stride(s) {missing} in NCHW layout "
            f"(found strides {sorted({s for _, s, _ in cuts})}), so it cannot serve as a detection backbone "
            "here; pick another model, e.g. one from timm as 'timm:<name>'."
        )
    stem_end = best(2)
    if stem_end is None:
        stem_end = best(4, first=True)

    boundaries = [stem_end, *(level_pos[level] for level in LEVELS)]
    stage_of: dict[str, int] = {}
    owners = [n for n in gm.graph.nodes if n.op in ("call_module", "get_attr")]
    for node in owners:
        # get_attr nodes sit where the tracer met them; their first user places them in the graph.
        anchor = node if node.op == "call_module" else next(iter(node.users), None)
        if anchor is None or anchor not in position:
            continue
        stage = sum(1 for b in boundaries if b < position[anchor])
        stage_of.setdefault(str(node.target), stage)

    return FeatureNodes(
        nodes={level: qualnames[p] for level, p in level_pos.items()},
        channels={level: int(nodes[p].meta["tensor_meta"].shape[1]) for level, p in level_pos.items()},
        stage_of=stage_of,
    )


def torchvision_extractor(name: str, pretrained: bool, levels: list[int]) -> tuple[nn.Module, dict[str, Any]]:
    from torchvision.models.feature_extraction import create_feature_extractor

    found = find_feature_nodes(name)
    model = weights_lib.torchvision_classifier(name, pretrained)
    return_nodes = {found.nodes[level]: f"c{level}" for level in levels}
    extractor = create_feature_extractor(model, return_nodes=return_nodes)
    return extractor, {
        "channels": [found.channels[level] for level in levels],
        "output_keys": [f"c{level}" for level in levels],
        "stage_of": found.stage_of,
        "image_mean": weights_lib.IMAGENET_MEAN,
        "image_std": weights_lib.IMAGENET_STD,
    }


def is_torchvision_classifier(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)
