"""Hand-written backward passes for the low-dim CPU update: autograd's gradients in fewer, cheaper ops.

Why: on CPU the matmuls of an IQL update at batch 256 run at the hardware's speed, and what else takes
time is per-op work: autograd records ~240 ops and runs ~40 backward nodes, each node adding its
result into a gradient buffer. Here each network runs forward through its own modules, so the values
are bit for bit the same, and keeps each layer's input. The backward then writes every parameter's
gradient straight into its ``.grad`` (the optimizer's flat buffer, `FlatAdam`). It uses the kernels
autograd runs: ``mm``/``bmm`` for the weights, ``sum`` for the biases, ``threshold_backward`` (in place)
for the ReLUs, ``tanh_backward`` for the actor's squashing. Only dL/d(network output) is written by
hand. Each algorithm's ``hand_gradients`` writes it next to the loss it differentiates, and tests check
it against autograd. The inputs must be low-dim: an image encoder's backward stays with autograd.

Every parameter's gradient is *written*, not added to, so the update needs no zero_grad.
"""

from __future__ import annotations

import torch
from torch import nn

from robot_pref.rl.networks import Actor, EnsembleLinear

_threshold_backward_ = torch.ops.aten.threshold_backward.grad_input


def forward(net: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    """``net`` applied layer by layer: [input, each hidden layer's activation after its ReLU, output]."""
    acts = [x]
    for module in net:
        if isinstance(module, nn.ReLU):
            acts[-1] = module(acts[-1])  # in place where the ReLU is: the list holds the activation itself
        else:
            acts.append(module(acts[-1]))
    return acts


def backward(net: nn.Sequential, acts: list[torch.Tensor], grad: torch.Tensor) -> None:
    """Write dL/dparameter into every parameter's ``.grad``, given ``grad`` = dL/d(output) and `forward`'s
    activations. The input's gradient is not computed: inputs here are data, not parameters."""
    layers = [m for m in net if not isinstance(m, nn.ReLU)]
    for i in range(len(layers) - 1, -1, -1):
        layer, x = layers[i], acts[i]
        if isinstance(layer, EnsembleLinear):
            grad = _ensemble_linear_backward(layer, x, grad, input_grad=i > 0)
        elif isinstance(layer, nn.Linear):  # y = x W^T + b
            torch.mm(grad.t(), x, out=layer.weight.grad)
            torch.sum(grad, 0, out=layer.bias.grad)
            grad = torch.mm(grad, layer.weight) if i > 0 else None
        else:
            raise TypeError(f"no hand-written backward for {type(layer).__name__}: train with --gradients autograd")
        if i > 0:  # through the ReLU whose output x is: zero where it was clamped
            _threshold_backward_(grad, x, 0, grad_input=grad)


def _ensemble_linear_backward(layer: EnsembleLinear, x: torch.Tensor, grad: torch.Tensor,
                              input_grad: bool) -> torch.Tensor | None:
    """y_m = x_m W_m + b_m for each member m; ``x`` (B, in) shared by all members or (members, B, in)."""
    members = layer.weight.shape[0]
    x = x.expand(members, *x.shape) if x.dim() == 2 else x
    torch.sum(grad, 1, keepdim=True, out=layer.bias.grad)
    if layer.weight.shape[-1] == 1:  # one output column: one gemv per member (a batched gemm is ~5x slower)
        for m in range(members):
            torch.mv(x[m].t(), grad[m, :, 0], out=layer.weight.grad[m, :, 0])
        return grad * layer.weight.transpose(1, 2) if input_grad else None  # (members, B, 1) x (members, 1, in)
    torch.bmm(x.transpose(1, 2), grad, out=layer.weight.grad)
    return torch.bmm(grad, layer.weight.transpose(1, 2)) if input_grad else None


def actor_backward(actor: Actor, obs: torch.Tensor, act: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Gradients of L = sum_b coef_b * nll_b(act_b | obs_b) written into the actor's ``.grad``. Returns nll (B,).

    gaussian: nll = sum_j 0.5 z_j^2 + log_std_j + c, with z = (a - mean) / std and mean = tanh(f), so
    dnll/dmean = -z / std, and dnll/dlog_std = 1 - z^2 where log_std is strictly inside its clamp (else 0).
    deterministic: nll = sum_j (mean_j - a_j)^2, so dnll/dmean = 2 (mean - a).
    """
    acts = forward(actor.net, obs)
    mean = torch.tanh(acts[-1])
    nll = actor.nll_of_mean(mean, act)
    c = coef.unsqueeze(-1)
    if actor.log_std is None:
        d_mean = (mean - act).mul_(c).mul_(2.0)
    else:
        log_std = actor.log_std
        clamped = log_std.clamp(Actor.LOG_STD_MIN, Actor.LOG_STD_MAX)
        inv_std = torch.exp(-clamped)
        z = (act - mean).mul_(inv_std)
        d_log_std = torch.addcmul(c, c, z.square(), value=-1.0).sum(0)  # sum_b c_b (1 - z_bj^2)
        inside = (log_std > Actor.LOG_STD_MIN) & (log_std < Actor.LOG_STD_MAX)  # autograd's clamp: 0 at a bound
        torch.mul(d_log_std, inside, out=log_std.grad)
        d_mean = z.mul_(c).mul_(-inv_std)
    backward(actor.net, acts, torch.ops.aten.tanh_backward(d_mean, mean))
    return nll
