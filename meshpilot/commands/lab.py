"""`meshpilot lab up|down|status|fault|load`: a live mesh on this machine, no cluster needed.

The lab is real Envoy in front of real HTTP backends, scraped by a real Prometheus, all on
127.0.0.1 (see `envs.lab`). `up` returns once every part answers and leaves them running;
`meshpilot serve --mesh lab` then controls it, `load` sends Poisson traffic through Envoy,
`fault` changes a version's error rate, latency or capacity (now, or after a delay and for a
while), `status` says what runs and what is down, and `down` stops exactly what `up` started.
`bridge` copies VirtualService weights from a kube-apiserver onto Envoy's routes (istiod's
part, weights only), so `meshpilot serve --mesh k8s` can run against the lab.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from envs.lab.spec import DEFAULT_LAB, load_lab
from envs.simulator.scenario import Burst, Diurnal, Load
from meshcore.errors import ConfigError
from meshpilot.commands.arg_types import non_negative_int, output_file, positive_float

EXIT_DOWN = 1
"""`lab status` exit status when the lab, or a part of it, is not running."""


def _state_dir(args: argparse.Namespace) -> Path:
    from envs.lab.lab import default_state_dir

    return Path(args.state_dir) if args.state_dir else default_state_dir()


def _burst(text: str) -> Burst:
    """``AT:DURATION:FACTOR`` (seconds from the start, seconds, rate multiplier)."""
    try:
        at_s, duration_s, factor = (float(x) for x in text.split(":"))
        return Burst(at_s=at_s, duration_s=duration_s, factor=factor)
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"a burst is AT:DURATION:FACTOR with AT >= 0, DURATION > 0, FACTOR > 0, got {text!r}"
        ) from err


def _diurnal_part(text: str) -> float:
    """One number of ``--diurnal``: finite and positive (the pair is checked when used)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lab",
        help="run a live mesh here: real Envoy, backends and Prometheus on 127.0.0.1",
        description=(
            "A live mesh on loopback: Envoy routes each service over weighted clusters named "
            "as Istio names them, in front of backends whose errors, latency and capacity "
            "can be changed at run time; Prometheus rebuilds Istio's series, so `meshpilot "
            "serve --mesh lab` runs the same PromQL as in a cluster."
        ),
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the running lab is recorded: ports, PIDs, logs, Envoy's route file "
        "(default: $XDG_STATE_HOME/meshpilot/lab or ~/.local/state/meshpilot/lab)",
    )

    up = actions.add_parser(
        "up", parents=[common], help="start the lab and wait until every part answers"
    )
    up.add_argument(
        "--lab",
        metavar="FILE",
        default=DEFAULT_LAB,
        help=f"lab file (YAML) or the name of a shipped one (default: {DEFAULT_LAB})",
    )
    up.add_argument(
        "--seed", type=non_negative_int, default=0, help="seed of the backends (default: 0)"
    )
    up.set_defaults(run=_up)

    down = actions.add_parser("down", parents=[common], help="stop every process `up` started")
    down.set_defaults(run=_down)

    status = actions.add_parser(
        "status",
        parents=[common],
        help="what runs and what is down (JSON; exit 1 if any part is down)",
    )
    status.set_defaults(run=_status)

    fault = actions.add_parser(
        "fault",
        parents=[common],
        help="change a version's error rate, latency or capacity",
        description=(
            "Set fields of one version: error_rate (0..1), latency_factor (multiplies the "
            "service time), capacity_factor (divides it), service_ms, cv. Now, or after "
            "--after seconds; with --for the old values come back after that long (the "
            "command waits)."
        ),
    )
    fault.add_argument("service", help="service name, as in the lab file")
    fault.add_argument("subset", help="version (subset) name")
    fault.add_argument(
        "--set",
        dest="changes",
        metavar="FIELD=VALUE",
        action="append",
        required=True,
        help="a field to change, repeatable (e.g. --set error_rate=0.3)",
    )
    fault.add_argument(
        "--ramp",
        type=positive_float,
        default=0.0,
        metavar="S",
        help="reach the new values linearly over S seconds (default: at once)",
    )
    fault.add_argument(
        "--after", type=positive_float, default=0.0, metavar="S", help="wait S seconds first"
    )
    fault.add_argument(
        "--for",
        dest="duration",
        type=positive_float,
        metavar="S",
        help="restore the previous values after S seconds (default: keep the fault)",
    )
    fault.set_defaults(run=_fault)

    load = actions.add_parser(
        "load",
        parents=[common],
        help="send open-loop Poisson traffic through Envoy and print what it measured",
    )
    load.add_argument(
        "--service",
        action="append",
        metavar="NAME",
        help="service to load, repeatable (default: every service, at its lab file's rps)",
    )
    load.add_argument(
        "--rps",
        type=positive_float,
        metavar="R",
        help="requests per second per service (default: the lab file's load.rps)",
    )
    load.add_argument(
        "--duration",
        type=positive_float,
        default=60.0,
        metavar="S",
        help="seconds of traffic (default: 60)",
    )
    load.add_argument(
        "--diurnal",
        type=_diurnal_part,
        nargs=2,
        metavar=("AMPLITUDE", "PERIOD_S"),
        help="modulate the rate: rps * (1 + AMPLITUDE * sin(2 pi t / PERIOD_S))",
    )
    load.add_argument(
        "--burst",
        type=_burst,
        action="append",
        default=[],
        metavar="AT:DURATION:FACTOR",
        help="multiply the rate by FACTOR from AT for DURATION seconds, repeatable",
    )
    load.add_argument("--seed", type=non_negative_int, default=0, help="arrival seed (default: 0)")
    load.add_argument(
        "--out", type=output_file, metavar="FILE", help="also write the summary JSON here"
    )
    load.set_defaults(run=_load)

    bridge = actions.add_parser(
        "bridge",
        parents=[common],
        help="copy VirtualService weights from a kube-apiserver onto the lab's Envoy routes",
        description=(
            "Play istiod for weights only: every --interval seconds, read the VirtualService "
            "<service> (http route 'default') of every lab service from the API server and, "
            "when its weights differ from Envoy's route file, write them there. Run "
            "`meshpilot serve --mesh k8s` against the same API server and the lab's "
            "Prometheus to close the production write path through the lab. Runs until "
            "SIGTERM or Ctrl-C."
        ),
    )
    bridge.add_argument(
        "--kubeconfig",
        metavar="FILE",
        required=True,
        help="kubeconfig of the API server holding the VirtualServices (needs get on "
        "virtualservices and destinationrules in the lab's namespace; list and watch too, "
        "else every read is a GET)",
    )
    bridge.add_argument(
        "--context",
        metavar="C",
        help="kubeconfig context to use (default: the file's current context)",
    )
    bridge.add_argument(
        "--interval",
        type=positive_float,
        default=0.5,
        metavar="S",
        help="seconds between two passes over the routes: the stand-in for istiod's push "
        "delay (default: 0.5)",
    )
    bridge.set_defaults(run=_bridge)


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _up(args: argparse.Namespace) -> int:
    from envs.lab.lab import lab_status, lab_up

    spec = load_lab(args.lab)
    state_dir = _state_dir(args)
    state, cleaned = lab_up(spec, state_dir, seed=args.seed)
    if cleaned:
        print(f"meshpilot lab: cleaned up a crashed earlier run in {state_dir}", file=sys.stderr)
    _print(lab_status(state_dir))
    print(
        f"lab {spec.name} is up: send traffic with `meshpilot lab load`, control it with "
        "`meshpilot serve --mesh lab`, stop it with `meshpilot lab down`"
        + (f" --state-dir {state_dir}" if args.state_dir else ""),
        file=sys.stderr,
    )
    del state
    return 0


def _down(args: argparse.Namespace) -> int:
    from envs.lab.lab import lab_down

    stopped = lab_down(_state_dir(args))
    _print({"stopped": stopped})
    return 0


def _status(args: argparse.Namespace) -> int:
    from envs.lab.lab import lab_status

    status = lab_status(_state_dir(args))
    _print(status)
    return 0 if status["running"] else EXIT_DOWN


def _fault(args: argparse.Namespace) -> int:
    from envs.lab.lab import running_state
    from envs.lab.traffic import apply_fault, fault_changes

    state = running_state(_state_dir(args))
    changes = fault_changes(state.spec, args.service, args.subset, args.changes)
    if args.after:
        time.sleep(args.after)
    before = apply_fault(state, args.service, args.subset, changes, ramp_s=args.ramp)
    _print({"service": args.service, "subset": args.subset, "set": changes, "before": before})
    if args.duration is not None:
        try:
            time.sleep(args.duration)
        finally:  # Ctrl-C or SIGTERM during the wait restores too
            apply_fault(state, args.service, args.subset, before, ramp_s=args.ramp)
            _print({"service": args.service, "subset": args.subset, "restored": before})
    return 0


def _load(args: argparse.Namespace) -> int:
    from envs.lab.lab import running_state
    from envs.lab.loadgen import run_load

    if args.diurnal and args.diurnal[0] >= 1:
        raise ConfigError(f"--diurnal: the amplitude must be below 1, got {args.diurnal[0]:g}")
    state = running_state(_state_dir(args))
    names = args.service or [s.name for s in state.spec.services]
    plan = []
    for name in names:
        svc = state.spec.service(name)
        load = Load(
            rps=args.rps or svc.load.rps,
            diurnal=(
                Diurnal(amplitude=args.diurnal[0], period_s=args.diurnal[1])
                if args.diurnal
                else svc.load.diurnal
            ),
            bursts=tuple(args.burst) or svc.load.bursts,
        )
        plan.append((svc.host(state.spec.namespace), load))
    result = run_load(f"127.0.0.1:{state.listener_port}", plan, args.duration, seed=args.seed)
    summary = result.summary(state.spec.slo_ms)
    _print(summary)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return 0


def _bridge(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from controller.adapters.envoy import EnvoyRouteActuator
    from controller.adapters.istio.actuator import VirtualServiceActuator
    from envs.lab.lab import running_state
    from meshpilot.lab_bridge import VirtualServiceBridge

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    source = VirtualServiceActuator(
        kubeconfig=args.kubeconfig, context=args.context, watch_cache=True
    )
    try:
        state = running_state(_state_dir(args))
        routes = state.spec.routes()
        bridge = VirtualServiceBridge(
            source,
            EnvoyRouteActuator(state.routes_file, state.admin_url),
            routes,
            interval_s=args.interval,
        )
        stop = threading.Event()
        previous = {
            s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            print(
                f"meshpilot lab bridge: copying {len(routes)} routes "
                f"({', '.join(r.key for r in routes)}) from {args.kubeconfig} to Envoy "
                f"{state.admin_url} every {args.interval} s; Ctrl-C stops",
                file=sys.stderr,
            )
            bridge.start()
            while not stop.wait(0.5):
                pass
            bridge.stop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    finally:
        source.close()
    _print({"passes": bridge.passes, "copies": bridge.copies, "errors": bridge.errors})
    return 0
