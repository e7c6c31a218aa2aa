"""One module per command. Each defines NAME and `command` (a Typer-annotated function).

Importing a command module must not import torch: the CLI starts fast and `--help` is instant.
"""
