"""Adam over one contiguous buffer per parameter group: fused Adam's update of the parameters, with less overhead.

Why: on CPU an IQL step's Adam cost is mostly per-tensor work around the kernel (~20 parameters per
group: gathering their grads and states, a step counter each, a tensor list per call), ~1 ms of a 7-8 ms
update. Here each group's parameters are views of one buffer and their gradients views of another, so
Adam sees one tensor per group and a zero_grad is one fill; autograd accumulates into the views. The
numbers are fused Adam's, but for a tensor of fewer elements than the CPU kernel's vector width (an
output bias, a log-std): the kernel runs such a tail through scalar code, inside the buffer through
vector code, which may round one ulp apart.

What callers see is a normal optimizer over the parameters they passed:
- ``zero_grad()`` zeroes the gradient buffers (``set_to_none`` is ignored: the views are the buffer);
  a gradient that someone else set to None or replaced is put back into the buffer before a step;
- parameters moved to another device or dtype (``module.to(...)`` after this was built) are laid out
  again on their new device, with the optimizer state, before the next step or state_dict call;
- ``state_dict()`` / ``load_state_dict()`` use the per-parameter layout of ``torch.optim.Adam``, so
  checkpoints read and write exactly what a per-parameter Adam's do.
One difference: a parameter that got no gradient is stepped with a zero gradient rather than skipped
(Adam's moments then move it if they are non-zero); every parameter of this project's learners gets a
gradient on every step.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FlatGroup:
    """Parameters re-pointed at views of one buffer (each keeps its own strides: channels_last stays so)."""

    def __init__(self, params: list[nn.Parameter]):
        if not params:
            raise ValueError("an empty parameter group: pass each group at least one parameter")
        if len({(p.device, p.dtype) for p in params}) > 1:
            raise ValueError("a parameter group holds parameters of several devices or dtypes: a flat buffer "
                             "needs one; split it into one group per device and dtype")
        self.params = params
        # dense strides in each parameter's own memory order (channels_last stays channels_last)
        self.strides = [torch.empty_like(p, memory_format=torch.preserve_format).stride() for p in params]
        self.offsets = [0]
        for p in params:
            self.offsets.append(self.offsets[-1] + p.numel())
        first = params[0]
        self.param = nn.Parameter(torch.empty(self.offsets[-1], device=first.device, dtype=first.dtype))
        self.grad = torch.zeros_like(self.param)
        self.param.grad = self.grad
        with torch.no_grad():
            for i, p in enumerate(params):
                view = self.view(self.param.data, i)
                view.copy_(p)
                p.data = view
        self.links = []  # (parameter, its gradient view, where its values live)
        for i, p in enumerate(params):
            g = self.view(self.grad, i)
            if p.grad is not None:  # laid out again after a move: keep what was accumulated
                g.copy_(p.grad)
            p.grad = g
            self.links.append((p, g, p.data_ptr()))

    def view(self, flat: torch.Tensor, i: int) -> torch.Tensor:
        """Parameter ``i``'s part of a buffer laid out like this group's (its values, gradients, Adam moments)."""
        p = self.params[i]
        return flat.as_strided(p.shape, self.strides[i], flat.storage_offset() + self.offsets[i])

    def intact(self) -> bool:
        """Whether every parameter still lives in the buffer and its .grad is its view of the gradient buffer."""
        return all(p.grad is g and p.data_ptr() == ptr for p, g, ptr in self.links)

    def moved(self) -> bool:
        """Whether a parameter left the buffer (moved to another device or dtype by ``module.to``, or replaced)."""
        return any(p.data_ptr() != ptr for p, _, ptr in self.links)

    def relink_grads(self) -> None:
        """Point every parameter's .grad back at its view of the gradient buffer, keeping what it holds."""
        for p, g, _ in self.links:
            if p.grad is not g:
                if p.grad is None:
                    g.zero_()
                else:
                    g.copy_(p.grad)
                p.grad = g


class FlatAdam(torch.optim.Adam):
    """torch.optim.Adam (fused where it can be) stepping one flat buffer per parameter group."""

    def __init__(self, params, **kwargs):
        self.flat_groups: list[FlatGroup] = []
        super().__init__(params, **kwargs)

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles keep the layout (Optimizer's drops it)
        return {**super().__getstate__(), "flat_groups": self.flat_groups}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        group = FlatGroup(params)
        self.flat_groups.append(group)
        super().add_param_group({**param_group, "params": [group.param]})

    def link(self) -> None:
        """Make the layout hold before a zero_grad, a step, or gradients written into the ``.grad`` views
        directly (`hand_backward`): one pass of identity checks when nothing changed."""
        if not all(group.intact() for group in self.flat_groups):
            self._relayout()
            for group in self.flat_groups:
                group.relink_grads()
        for group in self.flat_groups:
            group.param.grad = group.grad  # an outside zero_grad(set_to_none=True) on this optimizer drops it

    def _relayout(self) -> None:
        """Lay the groups out again where their parameters moved (``module.to``), the Adam state with them."""
        for i, old in enumerate(self.flat_groups):
            if not old.moved():
                continue
            new = FlatGroup(old.params)
            state = self.state.pop(old.param, {})
            self.state[new.param] = {k: v.to(new.param.device, v.dtype if k == "step" else new.param.dtype)
                                     if isinstance(v, torch.Tensor) else v for k, v in state.items()}
            self.param_groups[i]["params"] = [new.param]
            self.flat_groups[i] = new

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: ARG002 - the views are the buffer
        self.link()
        for group in self.flat_groups:
            group.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        self.link()
        if closure is not None or not self._plain_fused():
            return super().step(closure)
        # what Adam.step runs for a fused group (`torch.optim.adam._fused_adam`), without its ~0.1 ms of
        # per-group Python: the step count, then one kernel per group
        for g, fg in zip(self.param_groups, self.flat_groups):
            state = self.state[fg.param]
            state["step"].add_(1)
            torch._fused_adam_([fg.param], [fg.grad], [state["exp_avg"]], [state["exp_avg_sq"]],
                               [state["max_exp_avg_sq"]] if g["amsgrad"] else [], [state["step"]],
                               amsgrad=g["amsgrad"], lr=g["lr"], beta1=g["betas"][0], beta2=g["betas"][1],
                               weight_decay=g["weight_decay"], eps=g["eps"], maximize=g["maximize"])
        return None

    def _plain_fused(self) -> bool:
        """Whether every group is a fused Adam step with its state made: the short path then equals Adam.step."""
        if getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None:
            return False  # a GradScaler's unscale bookkeeping: Adam.step handles it
        for g, fg in zip(self.param_groups, self.flat_groups):
            lr, betas = g["lr"], g["betas"]
            if not g["fused"] or g["differentiable"] or g.get("decoupled_weight_decay", False) or \
                    fg.param not in self.state or any(isinstance(b, torch.Tensor) for b in betas) or \
                    (isinstance(lr, torch.Tensor) and lr.device != fg.param.device):
                return False
        return True

    # ------------------------------------------------------------------ the per-parameter layout on disk
    def state_dict(self) -> dict[str, Any]:
        self._relayout()
        flat = super().state_dict()
        state, groups, index = {}, [], 0
        for g, fg in zip(flat["param_groups"], self.flat_groups):
            saved = flat["state"].get(g["params"][0], {})
            ids = list(range(index, index + len(fg.params)))
            if saved:
                state.update({pid: {k: self._split(fg, k, v, i) for k, v in saved.items()}
                              for i, pid in enumerate(ids)})
            groups.append({**g, "params": ids})
            index += len(ids)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._relayout()
        saved, groups = state_dict["state"], state_dict["param_groups"]
        sizes = [len(g["params"]) for g in groups]
        ours = [len(fg.params) for fg in self.flat_groups]
        if sizes != ours:
            raise ValueError(f"the optimizer state holds groups of {sizes} parameters, this optimizer {ours}: the "
                             "checkpoint was written by a different model (hidden sizes, actor kind or inputs)")
        state, flat_groups = {}, []
        for gi, (g, fg) in enumerate(zip(groups, self.flat_groups)):
            per_param = [saved.get(pid) for pid in g["params"]]
            if any(s is not None for s in per_param):
                if any(s is None for s in per_param):
                    raise ValueError(f"optimizer group {gi}: some parameters have Adam state and others none; a "
                                     "flat buffer needs all or none")
                state[gi] = {k: self._join(fg, k, [s[k] for s in per_param]) for k in per_param[0]}
            flat_groups.append({**g, "params": [gi]})
        super().load_state_dict({"state": state, "param_groups": flat_groups})

    # Adam's state per parameter: "step" (a scalar, the same for all), moments shaped like the parameter
    @staticmethod
    def _split(fg: FlatGroup, key: str, value: Any, i: int) -> Any:
        if key == "step" or not isinstance(value, torch.Tensor):
            return value.clone() if isinstance(value, torch.Tensor) else value
        return fg.view(value, i).clone()

    @staticmethod
    def _join(fg: FlatGroup, key: str, values: list[Any]) -> Any:
        first = values[0]
        if key == "step" or not isinstance(first, torch.Tensor):
            return first.clone() if isinstance(first, torch.Tensor) else first
        flat = torch.zeros(fg.param.shape, dtype=first.dtype, device=first.device)
        for i, v in enumerate(values):
            fg.view(flat, i).copy_(v)
        return flat
