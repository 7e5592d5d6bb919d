"""Behaviour cloning with IQL's actor: L(phi) = E[ -log pi_phi(a | s) ] (or the squared error).

The baseline every comparison carries: same network, same observation model, same lr schedule;
only the advantage weights of IQL's actor loss are replaced by 1.
"""

from __future__ import annotations

from robot_pref.rl import hand_backward
from robot_pref.rl.learner import Learner, ObsModel, cosine
from robot_pref.rl.networks import Actor


class BC(Learner):
    def __init__(self, obs_model: ObsModel, act_dim: int, *, hidden=(256, 256), actor_lr=3e-4, actor="gaussian",
                 total_steps=1_000_000, compile=False):
        super().__init__(obs_model, compile)
        self.actor = Actor(obs_model.dim, act_dim, hidden, actor)
        params = list(self.obs_model.parameters()) + list(self.actor.parameters())
        self.setup_optimizer([{"params": params, "lr": actor_lr}], [cosine(total_steps)])

    def losses(self, batch, generator=None):
        s = self.obs_model(batch["obs"], generator)
        loss = self.actor.nll(s, batch["action"]).mean()
        return loss, {"actor_loss": loss.detach()}

    def hand_gradients(self, batch):
        """`losses`' gradients without autograd (`hand_backward`): L = sum_b nll_b / B."""
        act = batch["action"]
        nll = hand_backward.actor_backward(self.actor, self.obs_model(batch["obs"]), act,
                                           act.new_full((len(act),), 1.0 / len(act)))
        return {"actor_loss": nll.mean()}
