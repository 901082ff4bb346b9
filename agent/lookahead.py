"""A teacher that plans: the float Q-network's values, looked ahead ``depth`` steps through
the environment's own equations of motion.

``Q_d(s, a) = r(s, a) + gamma * (1 - terminal) * max_a' Q_{d-1}(s', a')`` with ``Q_0`` the
trained MLP: every action sequence of length ``depth`` is simulated (``3 ** depth`` leaves
on Acrobot), a one-off policy-improvement step on top of what DQN learned. Only the
teacher plans; the spiking student distilled from it still answers from one observation,
as on the chip. Acrobot-v1 only: its observation (cos, sin of both angles, both angular
velocities) determines its state, and its dynamics are gymnasium's own
(:meth:`AcrobotEnv._dsdt`), stepped here for a whole batch at once with the same
fourth-order Runge-Kutta step over one ``dt``, angle wrap and velocity bounds as
:meth:`AcrobotEnv.step`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from gymnasium.envs.classic_control.acrobot import AcrobotEnv

if TYPE_CHECKING:
    from agent.teacher import MLP

ENVS = ("Acrobot-v1",)


class AcrobotDynamics:
    """Acrobot-v1's step for a batch of states [N, 4] (theta1, theta2, dtheta1, dtheta2)."""

    def __init__(self) -> None:
        self.env = AcrobotEnv()
        self.torques = np.asarray(self.env.AVAIL_TORQUE, dtype=np.float64)

    @staticmethod
    def states(observations: np.ndarray) -> np.ndarray:
        o = np.asarray(observations, np.float64)
        return np.stack(
            [np.arctan2(o[:, 1], o[:, 0]), np.arctan2(o[:, 3], o[:, 2]), o[:, 4], o[:, 5]], 1
        )

    @staticmethod
    def observations(states: np.ndarray) -> np.ndarray:
        t1, t2 = states[:, 0], states[:, 1]
        obs = [np.cos(t1), np.sin(t1), np.cos(t2), np.sin(t2), states[:, 2], states[:, 3]]
        return np.stack(obs, 1).astype(np.float32)

    def _derivs(self, y: np.ndarray) -> np.ndarray:
        d = self.env._dsdt(y)  # elementwise in numpy: rows of y are the batch's columns
        return np.stack([*d[:4], np.zeros_like(y[-1])])

    def step(self, states: np.ndarray, actions: np.ndarray):
        """(next states, rewards, terminated) of one step from each state."""
        y = np.vstack([states.T, self.torques[actions]])
        dt = self.env.dt
        k1 = self._derivs(y)
        k2 = self._derivs(y + dt / 2.0 * k1)
        k3 = self._derivs(y + dt / 2.0 * k2)
        k4 = self._derivs(y + dt * k3)
        ns = (y + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:4].T.copy()
        for i in (0, 1):  # wrap to [-pi, pi] by whole turns, as gymnasium's wrap
            while (ns[:, i] > np.pi).any():
                ns[:, i] = np.where(ns[:, i] > np.pi, ns[:, i] - 2 * np.pi, ns[:, i])
            while (ns[:, i] < -np.pi).any():
                ns[:, i] = np.where(ns[:, i] < -np.pi, ns[:, i] + 2 * np.pi, ns[:, i])
        ns[:, 2] = np.clip(ns[:, 2], -self.env.MAX_VEL_1, self.env.MAX_VEL_1)
        ns[:, 3] = np.clip(ns[:, 3], -self.env.MAX_VEL_2, self.env.MAX_VEL_2)
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return ns, np.where(terminated, 0.0, -1.0), terminated


class Lookahead:
    """The teacher ``net`` planned ``depth`` steps ahead (``q``/``act`` as :class:`MLP`)."""

    def __init__(self, net: MLP, env_id: str, depth: int, gamma: float) -> None:
        if env_id not in ENVS:
            raise ValueError(
                f"teacher lookahead needs the environment's dynamics: {env_id} is not one of "
                f"{', '.join(ENVS)} (use --teacher.lookahead 0)"
            )
        if depth < 1:
            raise ValueError(f"lookahead depth counts steps (>= 1), got {depth}")
        self.net, self.depth, self.gamma = net, depth, gamma
        self.name = f"{net.name}, looked ahead {depth} steps through the environment's dynamics"
        self.dynamics = AcrobotDynamics()

    def _q(self, states: np.ndarray, depth: int) -> np.ndarray:
        n, n_act = len(states), len(self.dynamics.torques)
        nxt, reward, term = self.dynamics.step(
            np.repeat(states, n_act, axis=0), np.tile(np.arange(n_act), n)
        )
        if depth == 1:
            value = self.net.q(self.dynamics.observations(nxt)).max(axis=1)
        else:
            value = self._q(nxt, depth - 1).max(axis=1)
        return (reward + self.gamma * np.where(term, 0.0, value)).reshape(n, n_act)

    def q(self, observations: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, np.float32)
        out = [
            self._q(self.dynamics.states(obs[i : i + 4096]), self.depth)
            for i in range(0, len(obs), 4096)
        ]
        if not out:
            return np.zeros((0, len(self.dynamics.torques)), np.float32)
        return np.concatenate(out).astype(np.float32)

    def act(self, observations: np.ndarray) -> np.ndarray:
        return np.argmax(self.q(observations), axis=1)
