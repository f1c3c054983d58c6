"""The composition root: the `meshpilot` command line and the wiring of `meshpilot serve`.

No package of the project imports it (bench scripts and notebooks use it as clients do); it
is the only place where the live controller, the policies and the meshes meet.
"""
