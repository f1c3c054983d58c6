"""The composition root: the `meshpilot` command line and the wiring of `meshpilot serve`.

Nothing else imports this package; it is the only place where the live controller, the
policies and the meshes meet.
"""
