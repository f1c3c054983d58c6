"""Kubernetes adapters: the API client and its error translation (`client`), and leader
election over a Lease (`lease`). With `controller.adapters.istio`, the only code that imports
``kubernetes``."""
