"""The Istio adapter: the `Actuator` that moves the weights of a VirtualService's http route.

`routes` is the pure part (finding the managed route in an object, reading its weights,
building the JSON Patch); `watch_cache`, `destination_rules` and `actuator` talk to the API
server. Import from those modules; this package re-exports nothing.
"""
