"""`python -m ppsvd` and the `ppsvd` command.

The CLI takes a second to import (Typer, Rich, numpy): a Ctrl-C in that second is one line and
exit code 130, like one a moment later (cli.main), not a traceback from inside an import.
"""

import sys


def main() -> None:
    try:
        from ppsvd.cli import main as cli_main  # heavy: the commands and what they import
    except KeyboardInterrupt:
        sys.stderr.write("ppsvd: error: interrupted\n")
        sys.exit(130)
    cli_main()


if __name__ == "__main__":
    main()
