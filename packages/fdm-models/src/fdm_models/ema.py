"""Exponential moving average of model weights, used for sampling (docs/design.md §6.4 (E24)).

After each optimiser step, ``update(model)`` moves every floating-point parameter of the shadow
copy towards the model: shadow <- d * shadow + (1 - d) * param, with the warm-up decay
d_n = min(decay, (1 + n) / (10 + n)) for the n-th update (n = 0, 1, ...) when ``warmup`` is on,
so early averages are not dominated by the random initialisation. Buffers are copied as they are.

A compiled training step (``train.compile``, docs/design.md §6.5) calls ``advance()`` on the host
and then ``average(model, ema.weight)`` inside its graph: 1 - d_n is written into one 0-dim
device tensor, so the graph reads the warm-up decay from the device instead of baking a new
constant into a new graph every step.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel or ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


class EMA:
    """Shadow weights of ``model`` averaged over training steps."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.step = 0
        model = unwrap_model(model)
        self._parameter_names = {name for name, _ in model.named_parameters()}
        self.shadow: dict[str, torch.Tensor] = {
            name: tensor.detach().clone()
            for name, tensor in model.state_dict().items()
            if tensor.is_floating_point()
        }
        first = next(iter(self.shadow.values()), torch.zeros(()))
        self.weight = first.new_zeros(())  # 1 - d_n of a compiled update (`advance`)

    def current_decay(self) -> float:
        """The decay the next ``update`` applies."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.step) / (10 + self.step))

    def update(self, model: nn.Module) -> None:
        """The next update (E24) of the shadow copy towards ``model``, d_n a host float."""
        self.average(model, 1 - self.current_decay())
        self.step += 1

    def advance(self) -> torch.Tensor:
        """For an update inside a compiled graph: 1 - d_n of the next update (E24) written into
        ``weight`` (a 0-dim tensor on the shadows' device, the same tensor every step) and the
        update counted; the caller then runs ``average(model, weight)``."""
        self.weight.fill_(1 - self.current_decay())
        self.step += 1
        return self.weight

    @torch.no_grad()
    def average(self, model: nn.Module, weight: float | torch.Tensor) -> None:
        """shadow <- shadow + weight (param - shadow) for every parameter of ``model`` (E24 with
        weight = 1 - d_n), one foreach lerp, and one foreach copy of the buffers, with no read of
        any value. A tensor ``weight`` (0-dim, on the shadows' device) is read on the device."""
        model = unwrap_model(model)
        current = dict(model.named_parameters())
        current.update(model.named_buffers())
        averaged = [(self.shadow[n], current[n]) for n in self.shadow if n in self._parameter_names]
        copied = [
            (self.shadow[n], current[n]) for n in self.shadow if n not in self._parameter_names
        ]
        if averaged:
            shadows = [s for s, _ in averaged]
            values = [v.detach().to(s.dtype) for s, v in averaged]
            weights = [weight] * len(shadows) if isinstance(weight, torch.Tensor) else weight
            torch._foreach_lerp_(shadows, values, weights)
        if copied:
            torch._foreach_copy_([s for s, _ in copied], [v.detach() for _, v in copied])

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the shadow weights into ``model`` (its own weights are overwritten)."""
        target = unwrap_model(model).state_dict()
        for name, shadow in self.shadow.items():
            target[name].copy_(shadow)

    def averaged_model(self, model: nn.Module) -> nn.Module:
        """An eval-mode copy of ``model`` carrying the shadow weights; ``model`` is untouched."""
        averaged = copy.deepcopy(unwrap_model(model))
        self.copy_to(averaged)
        return averaged.eval()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors (safetensors-friendly): ``shadow.<name>``, ``step`` and ``decay``."""
        state = {f"shadow.{name}": tensor for name, tensor in self.shadow.items()}
        state["step"] = torch.tensor(self.step, dtype=torch.int64)
        state["decay"] = torch.tensor(self.decay, dtype=torch.float64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`; the shadow names and shapes must match the model's."""
        names = {key.removeprefix("shadow.") for key in state if key.startswith("shadow.")}
        missing = sorted(set(self.shadow) - names)
        unexpected = sorted(names - set(self.shadow))
        if missing or unexpected or "step" not in state or "decay" not in state:
            raise ValueError(
                f"EMA state does not match the model: missing {missing}, unexpected {unexpected}"
                + ("" if "step" in state and "decay" in state else ", and 'step'/'decay' absent")
            )
        for name, shadow in self.shadow.items():
            value = state[f"shadow.{name}"]
            if value.shape != shadow.shape:
                raise ValueError(
                    f"EMA state shadow.{name} has shape {tuple(value.shape)}, the model "
                    f"expects {tuple(shadow.shape)}"
                )
            shadow.copy_(value)
        self.step = int(state["step"])
        self.decay = float(state["decay"])
