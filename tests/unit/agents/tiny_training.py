"""Training options small enough for a `meshpilot train` job to finish in seconds in tests."""

TINY_PPO = [
    "--n-envs", "2",
    "--n-steps", "64",
    "--batch-size", "64",
    "--n-epochs", "1",
    "--episode-steps", "40",
    "--net-arch", "16", "16",
]  # fmt: skip
