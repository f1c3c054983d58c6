"""The operator dashboard: one page at ``/`` over the API, shipped with the package.

`controller.api.dashboard.router` serves the page, its assets (``static/``, package data)
and one read-only JSON endpoint the page charts from; everything else it shows and every
control it offers goes through the API's own endpoints, with the operator's bearer token.
"""
