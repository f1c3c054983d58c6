"""The lab: a live mesh on loopback — real Envoy, real HTTP backends, real Prometheus.

Beside the simulator (`envs.simulator`), the lab is the second mesh a policy can meet: Istio's
data plane (Envoy) routes each service over weighted clusters named as Istio names them, in
front of backends whose capacity, latency and errors are set at run time, and Prometheus
rebuilds Istio's series from Envoy's stats, so the controller's ``istio`` PromQL runs unchanged.
"""
