"""One module per `contrasent` subcommand: its options dataclass, its run function and any
check beyond ``validate()``; `contrasent.cli.main` imports each only when it runs or shows help.
"""
