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
(the oracle's labels), `imitation` (the DAgger warm start), `callbacks` (progress, episode
log, checkpoints, imitation during PPO), `artifacts` (run directory, checkpoints, export),
`ppo` (`train`, the entry point) and `ensemble` (``--members N``).

What we learned training on the suite (2 CPU cores, one torch thread), and why the defaults
and options look the way they do:

* PPO from scratch learns the big reactions (drain a failing canary, shed load from a
  collapsing version) within ~1M steps, but not the 1-2 weight-point precision that decides
  the tail at 80-90 % load, and its deterministic policy drifts between checkpoints.
* The network outputs a *correction* to the capacity-proportional split (`action_prior`);
  starting from zero correction is already the proportional baseline.
* The best policies come from imitating the oracle (`agents.oracle`, which reads the
  simulator's true state) with DAgger (`imitation_steps`), the student seeing only what the
  controller sees, plus utilization inputs (`obs_extension`); PPO then fine-tunes with small
  steps while the oracle labels keep anchoring it (`bc_lr`). Large PPO steps after the warm
  start undo it within ~100k steps (Adam turns noisy advantages into full-size steps).
* A student that sees the load through a 30 s rate window cannot follow the oracle's
  instant reactions: on diurnal-bursts the oracle drains v3 at low load and moves back the
  moment a 1.6x burst starts; a one-step-late oracle already loses to the static square-root
  split there (0.0103 vs 0.0088), and the imitating student overloaded v2 for the whole burst,
  then kept it near saturation while its backlog drained. Together, the square-root split as
  the action prior (`action_prior` 'sqrt'), annealed imitation steps (`imitation_anneal`), samples
  weighted by the step's bad fraction (`imitation_bad_weight`) and a teacher that sheds load
  from subsets still holding a queue (`teacher_drain_s`) halved diurnal-bursts (0.027 ->
  0.012) and met the many-subsets claim, but noisy-telemetry got worse (0.0096 -> 0.017); the
  runs were combinations, not one-at-a-time ablations. Oversampling (`oversample`) helped the
  oversampled scenarios and hurt the others (noisy-telemetry 0.028).
* The oracle is the wrong teacher for a student that is necessarily late: its split is a knife
  edge. A hedged teacher (`teacher_pull`: the oracle's objective plus a pull toward the
  square-root split of the true capacities) is, one interval late, 0.83x the square-root split
  on diurnal-bursts where the late oracle is 1.17x, and costs at most 4 % elsewhere; imitating
  it met 15 of 18 of issue #3's claims (the plain oracle: 12).
* The PPO phase eroded imitation precision because behaviour cloning during PPO (`bc_lr`
  1e-4) stepped ten times larger than the annealed end of the imitation fit; with `bc_lr`
  1e-5 a short fine-tune (49k steps) keeps it, longer ones still drift (200k steps: 13 of 18).
* A cubic correction shape (`action_gain` < 1) made calm outputs more precise (steady-90) but
  large corrections steeper, and noisy telemetry then swung the split (4.9x the oracle).
* Each tick's telemetry window is noisy (p99 noise, dropped samples, arrival bursts), so a
  policy fed only the level and its change reacts to noise: it held a degrading subset's
  weight for 40 s of a capacity ramp, then swung back and forth. Moving averages of the
  utilizations, p99 and slow ratio (`obs_extension` 'utilization-trend-ema2', ~25 s and ~100 s)
  cut noisy-telemetry from 1.33x to 1.15x the oracle and made the policy write less often.
* Per-subset service-time randomization is kept narrow (``--service-scale 0.95 1.05``): the
  capacity hint is what the operator configured, and a policy that cannot trust it at all
  cannot be precise.
"""
