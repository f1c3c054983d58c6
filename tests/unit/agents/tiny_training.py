"""Training options small enough for a `meshpilot train` job to finish in seconds in tests:
one member, no imitation warm start, no imitation during PPO, small rollouts and networks
(the defaults are the shipped recipe, which takes minutes)."""

TINY_PPO = [
    "--members", "1",
    "--imitation-steps", "0",
    "--bc-lr", "0",
    "--n-envs", "2",
    "--n-steps", "64",
    "--batch-size", "64",
    "--n-epochs", "1",
    "--episode-steps", "40",
    "--net-arch", "16", "16",
]  # fmt: skip
