"""Reward-weighted BC: behaviour cloning weighted by how much better than expected an action's return was.

The advantage-weighted regression of AWR (Peng, Kumar, Zhang, Levine 2019) run offline on the dataset,
with Monte-Carlo returns (AWR's TD(lambda) at lambda = 1) of the learned reward and one value baseline:

    G_t        = sum_k gamma^k r_{t+1+k}          (discounted return-to-go to the episode's end)
    z_t        = (G_t - mean G) / std G            (over all frames: beta does not depend on the reward's scale)
    L_V(psi)   = E[ (z_t - V_psi(s_t))^2 ]
    L_pi(phi)  = E[ min(exp(beta (z_t - V_psi(s_t))), w_max) * -log pi_phi(a_t | s_t) ]

Unlike IQL no Q function is learned: the weight reads only returns that happened in the data. The value
baseline removes what the state alone predicts (e.g. frames late in an episode have little return left),
so the weight ranks actions, not time steps. Same actor, observation model and lr schedules as IQL and BC.
Defaults (beta 1, w_max 20 = AWR's weight clip) were set before any evaluation, not tuned.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import lfilter

from robot_pref.rl import hand_backward
from robot_pref.rl.learner import Learner, ObsModel, cosine
from robot_pref.rl.networks import Actor, ValueNet


def standardized_returns(reward: np.ndarray, episode_ends: np.ndarray, gamma: float) -> np.ndarray:
    """Per-frame z-scored discounted return-to-go R[j] = r[j] + gamma R[j+1] within each episode.

    Batches give transition t the reward array's value at t + 1, so a transition's "reward" is then
    R[t+1] = G_t, the return of its action."""
    ret = np.zeros(len(reward), np.float64)
    starts = np.concatenate([[0], episode_ends[:-1]]).astype(np.int64)
    for start, end in zip(starts, episode_ends):  # R = r + gamma R', run backwards as a linear filter
        ret[start:end] = lfilter([1.0], [1.0, -gamma], reward[start:end][::-1].astype(np.float64))[::-1]
    return ((ret - ret.mean()) / max(float(ret.std()), 1e-8)).astype(np.float32)


def rwbc_weights(returns: torch.Tensor, values: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """min(exp(beta (G - V)), w_max): the regression weight of each (s, a)."""
    return torch.exp(beta * (returns - values)).clamp(max=max_weight)


class RWBC(Learner):
    def __init__(self, obs_model: ObsModel, act_dim: int, *, hidden=(256, 256), lr=3e-4, actor_lr=3e-4,
                 beta=1.0, max_weight=20.0, actor="gaussian", total_steps=1_000_000, compile=False):
        super().__init__(obs_model, compile)
        self.beta, self.max_weight = beta, max_weight
        self.v = ValueNet(obs_model.dim, hidden)
        self.actor = Actor(obs_model.dim, act_dim, hidden, actor)
        value = list(self.obs_model.parameters()) + list(self.v.parameters())
        self.setup_optimizer([{"params": value, "lr": lr}, {"params": list(self.actor.parameters()), "lr": actor_lr}],
                             [lambda _: 1.0, cosine(total_steps)])

    def losses(self, batch, generator=None):
        # image features are trained through the value only; the actor sees them detached (as IQL)
        s = self.obs_model(batch["obs"], generator)
        g = batch["reward"]  # z-scored return-to-go of the transition (see standardized_returns)
        v = self.v(s)
        v_loss = F.mse_loss(v, g)
        weight = rwbc_weights(g, v.detach(), self.beta, self.max_weight)
        actor_loss = (weight * self.actor.nll(s.detach(), batch["action"])).mean()
        logs = {"v_loss": v_loss.detach(), "actor_loss": actor_loss.detach(), "weight_mean": weight}
        return v_loss + actor_loss, logs

    def hand_gradients(self, batch):
        """`losses`' gradients without autograd (`hand_backward`): dL_V/dV(s)_b = 2 (V(s)_b - z_b) / B, and
        L_pi = sum_b [min(exp(beta (z_b - V(s)_b)), w_max) / B] * nll_b."""
        s, g, n = self.obs_model(batch["obs"]), batch["reward"], len(batch["reward"])
        v_acts = hand_backward.forward(self.v.net, s)
        v = v_acts[-1].squeeze(-1)
        v_loss = F.mse_loss(v, g)
        hand_backward.backward(self.v.net, v_acts, (v - g).mul_(2.0 / n).unsqueeze(-1))
        weight = rwbc_weights(g, v, self.beta, self.max_weight)
        actor_loss = (weight * hand_backward.actor_backward(self.actor, s, batch["action"], weight / n)).mean()
        return {"v_loss": v_loss, "actor_loss": actor_loss, "weight_mean": weight}
