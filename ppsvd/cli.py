"""The Typer app: mounts one module per command and maps errors to one line + an exit code.

Exit codes: 0 success; 1 a run or check failed; 2 bad input (usage, config, model, image);
130 interrupted. A full traceback is shown only with --debug or PPSVD_DEBUG=1.
"""

from __future__ import annotations

import inspect
import os
import re
import signal
import sys

import click
import typer
import typer.core
import typer.exceptions

from ppsvd import __version__
from ppsvd.api.execution import signals_interrupt
from ppsvd.commands import bench, doctor, plan, run, serve, simulate, verify
from ppsvd.console import error_line
from ppsvd.errors import Interrupted, PpsvdError, raised_from
from ppsvd.runtime.signals import STOP_SIGNALS


def _flags_take_no_value(params: list) -> list:
    """Typer shows a '<bool>' placeholder after flags it adds itself (--help, --install-completion,
    --show-completion), as if they took a value; ppsvd's own flags set metavar "" (options.FLAG)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(typer.core.TyperCommand):
    def get_params(self, ctx):
        return _flags_take_no_value(super().get_params(ctx))


class _Group(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _flags_take_no_value(super().get_params(ctx))


app = typer.Typer(
    name="ppsvd",
    cls=_Group,
    help="Pipeline-parallel Stable Video Diffusion: denoising steps split across GPUs, same videos as diffusers.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _help(doc: str | None) -> str:
    """A docstring as help text: paragraphs kept, the line breaks inside them joined."""
    text = inspect.cleandoc(doc or "")
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text)


for module in (run, simulate, serve, plan, bench, doctor, verify):
    if getattr(module, "command", None) is not None:
        app.command(module.NAME, help=_help(module.command.__doc__), cls=_Command)(module.command)


def _version(value: bool) -> None:
    if value:
        print(f"ppsvd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Pipeline-parallel Stable Video Diffusion."""


# Typer may vendor its own click: accept both its exception classes and click's.
_EXIT = (typer.Exit, click.exceptions.Exit)
_ABORT = (typer.Abort, click.exceptions.Abort)
_USAGE = (typer.exceptions.TyperException, click.ClickException)


def debug_enabled(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("PPSVD_DEBUG", "") not in ("", "0")


def _usage_line(exc: Exception) -> str:
    """click's usage error as one line, pointing at the command's --help."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "ppsvd"
    return f"{' '.join(message.split())} (see `{where} --help`)"


def _signal_within(exc: BaseException) -> BaseException | None:
    """The Interrupted (or KeyboardInterrupt) that exc was raised from, if any: a signal handler's
    exception raised while a module is being imported can come out wrapped (Python turns an
    exception in a class's __set_name__ into a RuntimeError, as torch's FakeTensor showed)."""
    return next((e for e in raised_from(exc) if isinstance(e, (Interrupted, KeyboardInterrupt))), None)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    try:
        # A signal anywhere (parsing, resolving options, importing torch) is one line and 128 +
        # signum; commands that run workers or a service install their own handlers inside.
        with signals_interrupt():
            code = app(args=argv, prog_name="ppsvd", standalone_mode=False)
    except _EXIT as exc:
        code = exc.exit_code
    except _USAGE as exc:  # bad flag, wrong number of values, a value not among the choices
        error_line(_usage_line(exc))
        code = exc.exit_code
    except _ABORT + (KeyboardInterrupt,):
        error_line("interrupted")
        code = 130
    except PpsvdError as exc:
        if debug:
            raise
        error_line(str(exc))
        code = exc.exit_code
    except Exception as exc:  # a bug: still one line unless debugging
        if debug:
            raise
        signalled = _signal_within(exc)  # a signal raised inside an import comes out wrapped by Python
        if isinstance(signalled, PpsvdError):
            error_line(str(signalled))
            code = signalled.exit_code
        elif signalled is not None:
            error_line("interrupted")
            code = 130
        else:
            error_line(
                f"internal error: {type(exc).__name__}: {exc} (rerun with --debug or PPSVD_DEBUG=1 for the traceback)"
            )
            code = 1
    code = code if isinstance(code, int) else 0
    if code > 128:
        # Leaving because of a signal: a repeated Ctrl-C while the interpreter shuts down (Python
        # puts the default handlers back) must not turn exit code 130 into death by SIGINT.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
    sys.exit(code)
