"""Parameter groups and learning-rate schedules shared by every task."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    backbone_prefix: str = "backbone.body.",
    backbone_lr_mult: float = 1.0,
    norm_bias_weight_decay: float = 0.0,
) -> list[dict[str, Any]]:
    """Split trainable parameters into (backbone | rest) x (decayed | norm-and-bias) groups.

    Norm weights and biases get `norm_bias_weight_decay` (0 by default): decaying them pulls
    scales towards zero, which only hurts. Backbone parameters (names starting with
    `backbone_prefix`) get `lr * backbone_lr_mult`, the usual knob for fine-tuning a pretrained
    network more gently than a freshly initialised head.
    """
    no_decay: set[str] = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if (
                isinstance(module, _NORM_TYPES)
                or param_name == "bias"
                or "norm" in type(module).__name__.lower()
            ):
                no_decay.add(full)

    groups: dict[tuple[bool, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_backbone = name.startswith(backbone_prefix)
        is_no_decay = name in no_decay
        key = (is_backbone, is_no_decay)
        if key not in groups:
            groups[key] = {
                "name": f"{'backbone' if is_backbone else 'head'}{'_no_decay' if is_no_decay else ''}",
                "params": [],
                "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                "weight_decay": norm_bias_weight_decay if is_no_decay else weight_decay,
            }
        groups[key]["params"].append(param)
    if not groups:
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
    model: nn.Module,
    optimizer_factory: Callable[..., Optimizer],
    lr: float,
    weight_decay: float,
    scheduler: Mapping[str, Any] | None,
    total_steps: int,
    backbone_lr_mult: float = 1.0,
    norm_bias_weight_decay: float = 0.0,
) -> dict[str, Any]:
    """What `configure_optimizers` returns: the optimiser and a per-step LambdaLR."""
    groups = parameter_groups(
        model,
        lr,
        weight_decay,
        backbone_lr_mult=backbone_lr_mult,
        norm_bias_weight_decay=norm_bias_weight_decay,
    )
    optimizer = optimizer_factory(groups)
    if not scheduler:
        return {"optimizer": optimizer}
    lr_lambda = warmup_schedule(total_steps, **dict(scheduler))
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": LambdaLR(optimizer, lr_lambda), "interval": "step", "frequency": 1},
    }
