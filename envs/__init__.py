"""Gymnasium environments and the per-request mesh simulator behind them."""

from envs.registration import ENV_IDS, register_envs

register_envs()

__all__ = ["ENV_IDS", "register_envs"]
