"""One module per `meshpilot` subcommand: each has `add_parser(subparsers)` and `run(args)`."""
