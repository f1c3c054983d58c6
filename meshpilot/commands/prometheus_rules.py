"""`meshpilot prometheus-rules`: the Prometheus recording rules for ``recording_rules: true``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from controller.adapters.promql import RECORDED_METRIC, get_profile
from controller.settings import load_settings
from meshcore.errors import ConfigError
from meshpilot.commands.arg_types import output_file


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "prometheus-rules",
        help="print the Prometheus recording rules that make each tick two cheap queries",
        description=(
            f"Print a Prometheus rule file (YAML) that records every per-subset stat the "
            f"controller reads (rps, 5xx rps, newest sample time, p99 ms, slow ratio, and the "
            f"p99 and slow ratio of the newest scrape interval) as "
            f"{RECORDED_METRIC}, for the PromQL profile, rate window, reporter and SLO of the "
            f"settings (file, MESHPILOT_ environment, then these options). Load it into "
            f"Prometheus (rule_files, or a PrometheusRule's spec with the Prometheus Operator) "
            f"and set prometheus.recording_rules: true; the observer then sends two cheap "
            f"queries per tick instead of evaluating every histogram bucket series inside the "
            f"tick, at the "
            f"price of up to one rule interval of extra lag."
        ),
    )
    p.add_argument(
        "--config", metavar="FILE", help="YAML settings file (default: $MESHPILOT_CONFIG, none)"
    )
    p.add_argument("--profile", help="PromQL profile (default: the settings', istio)")
    p.add_argument(
        "--window-s",
        type=float,
        metavar="S",
        help="rate window in s (default: the settings', 30)",
    )
    p.add_argument(
        "--reporter", help="which proxy's report to read (default: the profile's, destination)"
    )
    p.add_argument(
        "--slo-ms",
        type=float,
        metavar="MS",
        help="latency SLO in ms of the slow ratio, a histogram bucket bound (default: 250)",
    )
    p.add_argument(
        "--interval-s",
        type=float,
        metavar="S",
        help="rule evaluation interval in s (default: Prometheus's global evaluation_interval)",
    )
    p.add_argument(
        "--out",
        type=output_file,
        metavar="FILE",
        help="write the rules to FILE instead of stdout (its directory must exist)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    prometheus = {
        key: value
        for key, value in (
            ("profile", args.profile),
            ("window_s", args.window_s),
            ("reporter", args.reporter),
        )
        if value is not None
    }
    if prometheus:
        overrides["prometheus"] = prometheus
    if args.slo_ms is not None:
        overrides["slo_ms"] = args.slo_ms
    settings = load_settings(args.config, **overrides)
    prom = settings.prometheus
    profile = get_profile(prom.profile)
    try:
        rules = profile.recording_rules(
            window_s=prom.window_s,
            reporter=prom.reporter,
            slo_ms=settings.slo_ms,
            interval_s=args.interval_s,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    text = yaml.safe_dump(rules, sort_keys=False, width=100_000)
    if args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as out:
                out.write(text)
        except OSError as exc:
            raise ConfigError(f"cannot write {args.out}: {exc.strerror}") from exc
    else:
        sys.stdout.write(text)
    return 0
