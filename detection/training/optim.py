"""Parameter groups and learning-rate schedules shared by every task."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from detection.models.backbones import Backbone

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def optimizer_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The optimiser spec in its plain form ``{"name": <torch.optim class>, "lr": ..., ...}`` (a copy).

    Earlier checkpoints hold Hydra's form, ``{"_target_": "torch.optim.AdamW", "_partial_": true, ...}``,
    which is read as the same thing.
    """
    spec = dict(spec)
    target = spec.pop("_target_", None)
    spec.pop("_partial_", None)
    if target is not None:
        module, _, name = str(target).rpartition(".")
        if module != "torch.optim":
            raise ValueError(f"optimizer _target_ {target!r}: only torch.optim classes are supported")
        spec.setdefault("name", name)
    if "name" not in spec or "lr" not in spec:
        raise ValueError(f"model.optimizer needs a `name` (e.g. AdamW) and an `lr`; got keys {sorted(spec)}")
    if not isinstance(getattr(torch.optim, str(spec["name"]), None), type):
        raise ValueError(f"model.optimizer.name={spec['name']!r} is not a torch.optim optimiser")
    return spec


def _declared_backbone(model: nn.Module) -> set[int]:
    """Ids of the backbone's parameters, as the model declares them (``backbone_parameters()``)."""
    declared = getattr(model, "backbone_parameters", None)
    if declared is None:
        raise TypeError(
            f"{type(model).__name__} does not declare its parts: give it backbone_parameters() "
            "(see detection.models.heads.common.DetectorParts)"
        )
    return {id(p) for _, p in declared()}


def _backbone_stages(model: nn.Module) -> dict[int, int]:
    """Parameter id -> backbone stage (0 stem .. 4); parameters the backbone cannot place (e.g. a
    final 1x1 conv) count as its last stage."""
    backbones = [m for m in model.modules() if isinstance(m, Backbone)]
    if len(backbones) != 1:
        raise ValueError(
            f"layer_decay needs exactly one Backbone in {type(model).__name__}, found {len(backbones)}"
        )
    staged = list(backbones[0].stage_parameters())
    last = max((stage for stage, _, _ in staged if stage is not None), default=0)
    return {id(param): last if stage is None else stage for stage, _, param in staged}


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
    norm_bias_weight_decay: float = 0.0,
    layer_decay: float = 1.0,
    params: Collection[nn.Parameter] | None = None,
    name_suffix: str = "",
) -> list[dict[str, Any]]:
    """Split trainable parameters into (backbone | head) x (decayed | norm-and-bias) groups.

    The backbone is what the model declares with ``backbone_parameters()``. Norm weights and biases
    get `norm_bias_weight_decay` (0 by default): decaying them pulls scales towards zero, which only
    hurts. Backbone parameters get `lr * backbone_lr_mult`, the usual knob for fine-tuning a
    pretrained network more gently than a freshly initialised head.

    `layer_decay` < 1 (layer-wise lr decay) splits the backbone by stage (see
    `detection.models.backbones.base`): stage s of a backbone whose last stage is S gets
    ``lr * backbone_lr_mult * layer_decay ** (S - s)``, so the stem, farthest from the head and most
    generic, moves least. Groups are then named ``backbone.s<stage>[_no_decay]``.

    `params` restricts the groups to these parameters (a scheduled unfreeze adds them later), and
    `name_suffix` is appended to every group name.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    backbone = _declared_backbone(model)
    stages = _backbone_stages(model) if layer_decay != 1.0 else {}
    last_stage = max(stages.values(), default=0)
    only = None if params is None else {id(p) for p in params}
    no_decay: set[int] = set()
    for module in model.modules():
        for param_name, param in module.named_parameters(recurse=False):
            if (
                isinstance(module, _NORM_TYPES)
                or param_name == "bias"
                or "norm" in type(module).__name__.lower()
            ):
                no_decay.add(id(param))

    groups: dict[tuple[bool, int | None, bool], dict[str, Any]] = {}
    for param in model.parameters():
        if not param.requires_grad or (only is not None and id(param) not in only):
            continue
        is_backbone = id(param) in backbone
        stage = stages.get(id(param)) if is_backbone and stages else None
        is_no_decay = id(param) in no_decay
        key = (is_backbone, stage, is_no_decay)
        if key not in groups:
            part = "head"
            group_lr = lr
            if is_backbone:
                part = "backbone" if stage is None else f"backbone.s{stage}"
                depth = 0 if stage is None else last_stage - stage
                group_lr = lr * backbone_lr_mult * layer_decay**depth
            groups[key] = {
                "name": f"{part}{'_no_decay' if is_no_decay else ''}{name_suffix}",
                "params": [],
                "lr": group_lr,
                "weight_decay": norm_bias_weight_decay if is_no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
    if not groups and only is None:
        raise ValueError(
            "The model has no trainable parameters: check `freeze_at` and the backbone settings."
        )
    return list(groups.values())


def warmup_schedule(
    total_steps: int,
    name: str = "cosine",
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    min_lr_ratio: float = 0.0,
    milestones: Iterable[float] = (0.67, 0.89),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    """A multiplier of the base lr per optimiser step: linear warmup, then cosine, multistep or constant.

    `milestones` are fractions of `total_steps`, so a schedule survives a change of epochs or batch size.
    """
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(int(warmup_steps), total_steps)
    steps_at = sorted(int(m * total_steps) for m in milestones)

    def after_warmup(step: int) -> float:
        if name == "cosine":
            span = max(total_steps - warmup_steps, 1)
            progress = min(max(step - warmup_steps, 0) / span, 1.0)
            return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "multistep":
            return gamma ** sum(step >= s for s in steps_at)
        if name == "constant":
            return 1.0
        raise ValueError(f"Unknown scheduler name {name!r}: choose cosine, multistep or constant.")

    after_warmup(0)  # fail on a bad name now, not at the first step

    def factor(step: int) -> float:
        if step < warmup_steps:
            alpha = step / warmup_steps
            return (warmup_factor * (1.0 - alpha) + alpha) * after_warmup(warmup_steps)
        return after_warmup(step)

    return factor


def build_optimizer_and_scheduler(
    groups: list[dict[str, Any]],
    optimizer: Mapping[str, Any],
    scheduler: Mapping[str, Any] | None,
    total_steps: int,
) -> dict[str, Any]:
    """What `configure_optimizers` returns: the optimiser of spec `optimizer` over `groups`
    (`parameter_groups`) and a per-step LambdaLR."""
    options = optimizer_spec(optimizer)
    optimizer_class = getattr(torch.optim, str(options.pop("name")))
    lr = float(options.pop("lr"))
    weight_decay = float(options.pop("weight_decay", 0.0))
    built = optimizer_class(groups, lr=lr, weight_decay=weight_decay, **options)
    if not scheduler:
        return {"optimizer": built}
    lr_lambda = warmup_schedule(total_steps, **dict(scheduler))
    return {
        "optimizer": built,
        "lr_scheduler": {"scheduler": LambdaLR(built, lr_lambda), "interval": "step", "frequency": 1},
    }
