"""Implicit Q-Learning (Kostrikov, Nair, Levine 2021), in the shape of the CORL single-file reproduction.

Batch (s, a, r, s', d): a normalised to [-1, 1], r the reward of the transition (r(s') in this
project's reward arrays), d = 1 only when s' is a true terminal state.

    L_V(psi)    = E[ L_2^tau( min_i Qhat_i(s, a) - V_psi(s) ) ],   L_2^tau(u) = |tau - 1(u < 0)| u^2
    L_Q(theta)  = E[ (r + gamma (1 - d) V_psi(s') - Q_theta_i(s, a))^2 ]          for both critics i
    L_pi(phi)   = E[ min(exp(beta (min_i Qhat_i(s, a) - V_psi(s))), w_max) * -log pi_phi(a | s) ]
    Qhat       <- (1 - alpha) Qhat + alpha Q_theta                                  (polyak, alpha 0.005)

V never sees an action outside the dataset: the expectile tau > 0.5 of Q over dataset actions
approximates the max over in-support actions, and the policy is extracted by advantage-weighted
regression (AWR), so no out-of-distribution action is ever queried.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from robot_pref.rl import hand_backward
from robot_pref.rl.learner import Learner, ObsModel, cosine
from robot_pref.rl.networks import Actor, TwinQ, ValueNet


def expectile_weight(u: torch.Tensor, tau: float) -> torch.Tensor:
    """|tau - 1(u < 0)|, elementwise."""
    return torch.where(u < 0, 1.0 - tau, tau)


def expectile_loss(u: torch.Tensor, tau: float) -> torch.Tensor:
    """L_2^tau(u) = |tau - 1(u < 0)| * u^2, elementwise."""
    return expectile_weight(u, tau) * u.square()


class IQL(Learner):
    def __init__(self, obs_model: ObsModel, act_dim: int, *, hidden=(256, 256), lr=3e-4, actor_lr=3e-4,
                 gamma=0.99, expectile=0.7, beta=3.0, max_weight=100.0, polyak=0.005, actor="gaussian",
                 total_steps=1_000_000, compile=False):
        super().__init__(obs_model, compile)
        d = obs_model.dim
        self.gamma, self.expectile, self.beta, self.max_weight, self.polyak = gamma, expectile, beta, max_weight, polyak
        self.q = TwinQ(d, act_dim, hidden)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self._target_params, self._online_params = list(self.q_target.parameters()), list(self.q.parameters())
        self.v = ValueNet(d, hidden)
        self.actor = Actor(d, act_dim, hidden, actor)
        critic = list(self.obs_model.parameters()) + list(self.q.parameters()) + list(self.v.parameters())
        self.setup_optimizer([{"params": critic, "lr": lr}, {"params": list(self.actor.parameters()), "lr": actor_lr}],
                             [lambda _: 1.0, cosine(total_steps)])

    @torch.no_grad()
    def targets(self, s, s_next, a, r, d):
        """min_i Qhat_i(s, a) and the TD target r + gamma (1 - d) V_psi(s')."""
        q_hat = self.q_target(s, a).amin(0)
        return q_hat, torch.addcmul(r, 1.0 - d, self.v(s_next), value=self.gamma)

    def awr_weight(self, adv: torch.Tensor) -> torch.Tensor:
        """min(exp(beta A), w_max), a constant of the actor's loss."""
        return torch.exp(self.beta * adv.detach()).clamp(max=self.max_weight)

    def losses(self, batch, generator=None):
        # image features are trained through the critics only; the actor sees them detached (as DrQ)
        s = self.obs_model(batch["obs"], generator)
        a = batch["action"]
        with torch.no_grad():
            s_next = self.obs_model(batch["next_obs"], generator)
        q_hat, q_target = self.targets(s, s_next, a, batch["reward"], batch["done"])

        # L_V: expectile regression of V(s) towards the target critics' Q(s, a)
        v = self.v(s)
        adv = q_hat - v
        v_loss = expectile_loss(adv, self.expectile).mean()

        # L_Q: one-step TD towards r + gamma V(s'), no bootstrapping through terminals
        q = self.q(s, a)  # (2, B)
        q_loss = F.mse_loss(q, q_target.expand_as(q))  # mean over both critics = CORL's sum / 2

        # L_pi: advantage-weighted regression with exp(beta A) clipped at w_max
        weight = self.awr_weight(adv)
        actor_loss = (weight * self.actor.nll(s.detach(), a)).mean()

        # unreduced V and advantages: averaged only on the steps that get logged
        logs = {"v_loss": v_loss.detach(), "q_loss": q_loss.detach(), "actor_loss": actor_loss.detach(),
                "v_mean": v.detach(), "adv_mean": adv.detach()}
        return v_loss + q_loss + actor_loss, logs

    def hand_gradients(self, batch):
        """`losses`' gradients written into ``.grad`` without autograd (`hand_backward`); the same logs.

        With u = min_i Qhat_i(s, a) - V(s), y = r + gamma (1 - d) V(s') and B the batch size:
            dL_V / dV(s)_b      = -2 |tau - 1(u_b < 0)| u_b / B
            dL_Q / dQ_i(s, a)_b = 2 (Q_i(s, a)_b - y_b) / (2 B)
            L_pi = sum_b [min(exp(beta u_b), w_max) / B] * nll_b          (`hand_backward.actor_backward`)
        """
        s, s_next, a = self.obs_model(batch["obs"]), self.obs_model(batch["next_obs"]), batch["action"]
        q_hat, q_target = self.targets(s, s_next, a, batch["reward"], batch["done"])
        n = len(a)

        v_acts = hand_backward.forward(self.v.net, s)
        v = v_acts[-1].squeeze(-1)
        adv = q_hat - v
        tau_weight = expectile_weight(adv, self.expectile)
        v_loss = (tau_weight * adv.square()).mean()
        hand_backward.backward(self.v.net, v_acts, (tau_weight * adv).mul_(-2.0 / n).unsqueeze(-1))

        q_acts = hand_backward.forward(self.q.net, torch.cat([s, a], -1))
        q = q_acts[-1].squeeze(-1)
        q_loss = F.mse_loss(q, q_target.expand_as(q))
        hand_backward.backward(self.q.net, q_acts, (q - q_target).mul_(1.0 / n).unsqueeze(-1))

        weight = self.awr_weight(adv)
        actor_loss = (weight * hand_backward.actor_backward(self.actor, s, a, weight / n)).mean()
        return {"v_loss": v_loss, "q_loss": q_loss, "actor_loss": actor_loss, "v_mean": v, "adv_mean": adv}

    @torch.no_grad()
    def after_step(self) -> None:
        torch._foreach_lerp_(self._target_params, self._online_params, self.polyak)
