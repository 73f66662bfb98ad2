"""The contract every detection head implements, and the registry that finds heads by name.

A head is a detector class that mixes in `Detector` and a builder registered with
`register_head`. The builder takes the detector's feature module (`DetectorBackbone`: the
classification backbone then the neck) and the number of classes, plus its knobs as keyword-only
arguments, and returns the detector. The detector then follows torchvision's contract:

- ``forward(images, targets)``: images a list of float [3, H, W] in [0, 1]; in train mode it
  returns a dict of scalar losses (the total is their sum), in eval mode one
  ``{"boxes" [N, 4] xyxy input pixels, "scores" [N], "labels" [N] in [0, C)}`` per image, all
  float32 under any autocast;
- ``.backbone`` (the `DetectorBackbone`), ``.transform`` (`DetectionTransform`), ``.num_classes``.

The template calls the optional hooks below; their defaults say "this head has none", so a head
with no anchors, say, needs nothing and gets no coverage figure.

Registering is one decorator on the builder, in the head's own module. Every module of
`detection.models.heads` is imported when the registry is first read (`head_names`), so a new
head needs its module and its configs, nothing else; a head that lives outside the package
registers when its module is imported.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from detection.models.backbones import Backbone

if TYPE_CHECKING:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from detection.models.heads.anchors import Coverage


class Detector:
    """What every detector of `build_detector` declares about itself (a mixin of the head's class).

    Parts: ``backbone.body`` is the classification `Backbone`; everything else (neck, head) is the
    part trained from scratch. Optimiser groups, fine-tuning schedules and freezing use
    `backbone_parameters` / `head_parameters` instead of guessing from parameter names.
    """

    backbone: nn.Module
    num_classes: int

    @property
    def body(self) -> Backbone:
        return self.backbone.body

    def backbone_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the classification backbone, names as in ``named_parameters()``."""
        return self.backbone.body.named_parameters(prefix="backbone.body")

    def head_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything that is not the classification backbone."""
        own = {id(p) for _, p in self.backbone_parameters()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in own)

    # ---------------------------------------------------------------- optional hooks
    def anchor_coverage(
        self, boxes: Sequence[Tensor], input_sizes: Sequence[tuple[int, int]]
    ) -> Coverage | None:
        """The share of `boxes` (per image, xyxy input pixels) its positive assignment can reach,
        or None where the head has no fixed anchors or levels to miss a box (the default)."""
        return None

    def sized_anchor_generator(self) -> AnchorGenerator | None:
        """The anchor generator whose sizes ``anchor_sizes=auto`` derives from the training boxes
        (levels x sizes per level), or None: the head takes no anchor sizes (the default)."""
        return None

    def replace_classifier(self, num_classes: int, prior_probability: float = 0.01) -> None:
        """Predict `num_classes` classes: a new, freshly initialised classification layer; every
        other weight kept. Heads that cannot say so."""
        raise NotImplementedError(f"{type(self).__name__} has no replace_classifier hook")

    def prepare_export(self) -> None:
        """Switch, in place, to ops that ONNX and TorchScript tracing map (called on the copy that
        is exported); the default has nothing to switch."""


@dataclass(frozen=True)
class HeadEntry:
    """A registered head: its builder and what it asks of the detector's feature module."""

    name: str
    build: Callable[..., nn.Module]
    neck: Mapping[str, Any] = field(default_factory=dict)
    body_outputs: Callable[[Backbone, Mapping[str, Any]], list[str]] | None = None
    options_from: tuple[Callable[..., Any], ...] = ()

    def knobs(self) -> list[str]:
        """The keyword arguments the head accepts (its builder's, then those it passes on)."""
        names = _keyword_only(self.build)
        for function in self.options_from:
            names += [k for k in _keyword_only(function) if k not in names]
        return names

    def knob_values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` knobs with the builder's defaults for the rest."""
        out = {}
        for function in (*self.options_from, self.build):
            for p in inspect.signature(function).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty:
                    out[p.name] = p.default
        return {**out, **dict(given)}

    def body_maps(self, body: Backbone, knobs: Mapping[str, Any]) -> list[str]:
        """The backbone maps the head reads besides the neck's outputs (e.g. Light-Head's C4)."""
        return list(self.body_outputs(body, self.knob_values(knobs))) if self.body_outputs else []


_REGISTRY: dict[str, HeadEntry] = {}
_discovered = False


def register_head(
    name: str,
    *,
    neck: Mapping[str, Any] | None = None,
    body_outputs: Callable[[Backbone, Mapping[str, Any]], list[str]] | None = None,
    options_from: Sequence[Callable[..., Any]] = (),
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register the builder it wraps as head `name`.

    Args:
        neck: the neck this head is usually paired with (``build_neck`` arguments, e.g.
            ``{"extra_levels": "p6p7"}``); a config's neck entries override them.
        body_outputs: given the backbone and the head's knobs, the backbone maps (names) the head
            reads besides the neck's; they come in the same feature dict.
        options_from: functions whose keyword-only arguments the builder passes on through
            ``**options`` (e.g. the shared R-CNN builder); they count as the head's knobs.
    """

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        known = _REGISTRY.get(name)
        if known is not None and known.build.__qualname__ != build.__qualname__:
            raise ValueError(f"head {name!r} is registered already (by {known.build.__module__})")
        _REGISTRY[name] = HeadEntry(name, build, dict(neck or {}), body_outputs, tuple(options_from))
        return build

    return register


def _discover() -> None:
    """Import every module of this package once, so that each head registers itself."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module("detection.models.heads")
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        importlib.import_module(module.name)
    _discovered = True


def head_names() -> tuple[str, ...]:
    """Every registered head, in registration order."""
    _discover()
    return tuple(_REGISTRY)


def head_entry(name: str) -> HeadEntry:
    """The registered head `name`; an unknown name lists the known ones."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown head {name!r}; choose one of {tuple(_REGISTRY)}")
    return _REGISTRY[name]


def head_knobs(head: str) -> list[str]:
    """The keyword arguments head `head` accepts through `build_detector`."""
    return head_entry(head).knobs()


def _keyword_only(function: Callable[..., Any]) -> list[str]:
    params = inspect.signature(function).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
