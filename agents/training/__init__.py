"""Train the PPO traffic-split policy offline against the simulator, and export it for serving.

This package is the only part of meshpilot that imports torch and stable-baselines3 (an
import-linter contract says so); serving reads the exported `.npz` with numpy alone
(`agents.network`, `agents.policy_file`). It trains on `meshpilot/MeshSim-v0` with domain
randomization over a scenario set (each episode draws a scenario and perturbs load, service
times, event times and telemetry), keeps the observation normalizer (`VecNormalize`) next to
the model, and exports the actor. torch and stable-baselines3 are imported inside the functions
that need them, so `config.TrainConfig` (and `meshpilot train --help`) work without the
``train`` extra.

Modules: `config` (TrainConfig, the option help), `wrappers` (the training envs), `teacher`
(the teacher's labels), `imitation` (the DAgger warm start and the imitation loss),
`callbacks` (progress, episode log, checkpoints, imitation during PPO), `artifacts` (run
directory, checkpoints, export), `init_from` (``--init``: a policy file back into a fresh
model), `ppo` (`train`: one run) and `ensemble` (`train_ensemble`: ``--members N`` runs and
their ensemble).

Fine-tuning on a live mesh (``--mesh lab``) trains MeshLive-v0, one env per route, on ports
the command line hands in (`wrappers.LiveMesh`), starting from a policy file (``--init``).

How a run trains (`config.TrainConfig`'s defaults are the shipped model's recipe):

* The network outputs a *correction* to the square-root split (`agents.action_prior`) and sees
  the FeatureSpec vector plus utilization, trend, newest-interval and moving-average inputs
  (`agents.obs_extensions`); serving computes both the same way.
* The warm start is DAgger imitation (`imitation_steps`) of a teacher that reads the
  simulator's true state: the oracle's objective pulled toward the square-root split of the
  true capacities (`teacher_pull`), on capacities shrunk by the queues still to drain
  (`teacher_drain_s`). The student sees only what the controller sees; samples of steps with
  many bad requests weigh more (`imitation_bad_weight`), and each fit's step size is annealed.
* PPO then fine-tunes with small steps (`learning_rate`, `total_steps`) while the teacher's
  labels keep anchoring the actor after every rollout (`bc_lr`).
* `members` runs with consecutive seeds train in parallel processes; the served policy writes
  the split of their mean action.
"""
