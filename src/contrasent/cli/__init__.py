"""The `contrasent` command line: the top layer, which turns argv and YAML recipes into calls
of the library (train, eval, report, embed, index, search, export).

`main` holds the command table; `commands/` one module per command; `args` what they share.
"""
