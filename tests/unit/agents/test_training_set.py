"""What `meshpilot train` trains on (`TrainConfig.load_scenarios`).

Cases:
- `--generated N`: generated meshes of the train seed range only, the same scenarios as the
  files `meshpilot scenarios sample --seed 0 --count N` writes, in their file-name order (so a
  run on those files and one with `--generated N` draw the same episodes); the public suite
  and the validation and test ranges stay held out;
- scenario files given on the command line replace the generated set; by default (no files,
  `--generated 0`) the set is the public suite, the shipped model's;
- the run directory names the set; a negative count is refused with one clear line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.training.config import TrainConfig
from envs.simulator.generator import SEED_RANGES
from envs.simulator.scenario import load_scenario, suite_paths
from meshpilot.cli import main


def _seed(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def test_the_generated_set_is_the_files_scenarios_sample_writes(tmp_path: Path) -> None:
    sample = ["scenarios", "sample", "--seed", "0", "--count", "12", "--out", str(tmp_path)]
    assert main(sample) == 0
    files = sorted(tmp_path.glob("*.yaml"))  # the order a shell's glob lists them in
    assert len(files) == 12

    generated = TrainConfig(generated=12).load_scenarios()

    assert generated == [load_scenario(p) for p in files]
    assert TrainConfig(scenarios=tuple(map(str, files))).load_scenarios() == generated


def test_the_generated_set_holds_out_the_suite_and_the_other_ranges() -> None:
    names = [sc.name for sc in TrainConfig(generated=300).load_scenarios()]

    assert len(names) == 300
    assert len(set(names)) == 300
    assert {_seed(n) for n in names} == set(range(300))
    assert all(_seed(n) in SEED_RANGES["train"] for n in names)
    assert not set(names) & {load_scenario(p).name for p in suite_paths()}


def test_files_replace_the_generated_set_and_the_default_is_the_suite() -> None:
    files = TrainConfig(scenarios=("steady-50",), generated=5).load_scenarios()
    assert [sc.name for sc in files] == ["steady-50"]
    suite = TrainConfig().load_scenarios()
    assert [sc.name for sc in suite] == [load_scenario(p).name for p in suite_paths()]


@pytest.mark.parametrize(
    ("config", "name"),
    [
        (TrainConfig(generated=300), "generated300"),
        (TrainConfig(), "suite"),
        (TrainConfig(scenarios=("steady-50",)), "steady-50"),
        (TrainConfig(scenarios=("steady-50", "steady-80")), "steady-50+1"),
    ],
)
def test_the_run_directory_names_the_set(config: TrainConfig, name: str) -> None:
    assert config.scenario_set == name


def test_a_negative_count_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--out-dir", str(tmp_path), "--generated", "-1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "--generated" in err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())
