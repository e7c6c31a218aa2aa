"""The one way a run executes, for `ppsvd run`, `ppsvd simulate` and `ppsvd.run` alike.

    execute(config)
      --resume: the stopped run's config.json (with the execution options the caller set) and
                only the samples it lacks
      --strategy auto -> a layout (ppsvd.planner), one line saying why
      checks before any worker starts (options, devices, model files and shapes, images, memory)
      self-launched: N local workers (ppsvd.runtime.launch); SIGTERM/SIGHUP before they start
                     end the command with one line, like Ctrl-C
      under torchrun: this process is one stage (ppsvd.runtime.worker.torchrun_main); rank 0
                      announces and summarises, the stage that wrote the samples says how to resume

The caller prints: `summary` is called with the config and the run directory once the run is
complete. The CLI asks for `exit_when_done`: under torchrun the process then ends with os._exit,
because a normal interpreter shutdown runs the C++ destructors of gloo's groups and threads,
which aborted a finished run now and then ("terminate called without an active exception",
SIGABRT). A script that calls ppsvd.run under torchrun gets its RunResult back instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ppsvd import planner
from ppsvd.api.results import RunResult
from ppsvd.config import RunConfig
from ppsvd.console import error_line, notice, out
from ppsvd.environment import env_world
from ppsvd.errors import ConfigError, Interrupted, StageFailedError
from ppsvd.io.atomic import check_output_dir, remove_temp_files
from ppsvd.io.results import listed_entries, restart_journal
from ppsvd.io.resume import ResumePlan, hold, load_run_config, merge, plan_resume
from ppsvd.io.rundir import read_marker
from ppsvd.io.samples import skipped_images
from ppsvd.io.sources import record_sources
from ppsvd.planning.steps import partition_steps
from ppsvd.runtime import launch as launcher
from ppsvd.runtime.signals import STOP_SIGNALS, StopSignal, catch_stop_signals, give_back_signals, leave, stop_raising
from ppsvd.runtime.worker import torchrun_main

World = tuple[int, int, int, int]
"""(rank, world size, local rank, local world size) under torchrun (ppsvd.environment.env_world)."""

Summary = Callable[[RunConfig, Path], None]
"""Shows a finished run: called with its config and run directory (on rank 0 under torchrun)."""


def execute(
    config: RunConfig,
    *,
    resume: str | os.PathLike | None = None,
    explicit: Mapping[str, str] | None = None,
    command: str = "run",
    summary: Summary | None = None,
    exit_when_done: bool = False,
    announce: bool = True,
) -> RunResult:
    """Run a config: config.layout.nproc local workers, or, under torchrun, this process's stage.

    resume: a stopped run's directory: its config.json's settings, with the execution options
    `explicit` names (RunConfig field -> the flag or keyword that set it), and only the samples
    it lacks (ppsvd.io.resume). command: 'run' or 'simulate', for the resume line. announce:
    print the notices before a run (the layout --strategy auto chose, skipped images, an uneven
    split, the transport picked); a caller with its own output (ppsvd verify) turns them off.
    Raises ConfigError (one line) before any worker starts, StageFailedError naming the stage
    when one fails, Interrupted (exit code 128 + signal) with the line that says how to go on.
    """
    world = env_world()
    with _holding(resume, world):
        return _execute(config, resume, explicit, command, summary, exit_when_done, announce, world)


@contextlib.contextmanager
def _holding(resume: str | os.PathLike | None, world: World | None) -> Iterator[None]:
    """A run to resume must be a run directory (its marker: anything else is refused untouched),
    and is locked before anything is read from it, by the launching process or torchrun's rank 0
    (ppsvd.io.rundir): a second run or resume of the same directory is refused with one line."""
    if resume is None:
        yield
        return
    if world is not None and world[0] != 0:
        read_marker(Path(resume))
        yield
        return
    lock = hold(Path(resume))
    try:
        yield
    finally:
        lock.release()


def _execute(
    config: RunConfig,
    resume: str | os.PathLike | None,
    explicit: Mapping[str, str] | None,
    command: str,
    summary: Summary | None,
    exit_when_done: bool,
    announce: bool,
    world: World | None,
) -> RunResult:
    speaks = announce and (world is None or world[0] == 0)  # one process announces
    plan = _resume_plan(Path(resume), config, explicit or {}, world) if resume is not None else None
    if plan is not None:
        config = plan.config
    config, reason = planner.resolve_strategy(config, None if world is None else world[1])
    if reason is not None and speaks:
        say(config, reason)
    config.validate()
    if plan is not None and plan.finished:
        if speaks:
            say(config, f"nothing to do: all {config.job.num_samples} samples of {plan.run_dir} are finished")
        return RunResult.load(plan.run_dir)
    if world is not None:
        return _on_torchrun(config, plan, world, command, summary, exit_when_done, speaks)
    return _self_launched(config, plan, command, summary, speaks)


def check(config: RunConfig) -> RunConfig:
    """Everything that can fail before a worker starts: the options, the devices, the model's files
    and shapes, the images, the memory, a --costs-from run. Raises ConfigError (one line). Returns
    the config to run: its images named by absolute paths, the digest of each recorded (a resumed
    run's images checked against theirs: ppsvd.io.sources)."""
    from ppsvd.models.base import preflight  # imports torch: only when a run is checked

    config = record_sources(config.validate())
    if env_world() is None:
        import torch  # heavy, as above

        config.check_devices(torch.cuda.device_count() if config.model.device == "cuda" else 0, config.layout.nproc)
    preflight(config)
    if config.layout.costs_from:
        planner.known_costs(config)  # a run directory without usable costs: one line, now
    return config


def _self_launched(
    config: RunConfig, plan: ResumePlan | None, command: str, summary: Summary | None, speaks: bool
) -> RunResult:
    with signals_interrupt():
        try:
            config = check(config)
            if plan is None:
                check_output_dir(config.output.output_dir)  # after the input checks: bad input creates nothing
            if speaks:
                _announce(config, config.layout.nproc)
            if plan is not None:
                _restart(plan)
            launched = launcher.launch(
                config,
                run_dir=None if plan is None else plan.run_dir,
                indices=None if plan is None else plan.remaining,
            )
        except Interrupted as exc:  # the one line, wherever the signal came (checks, start-up, the run)
            if exc.run_dir is None:  # before a run directory was made (or once it was removed again)
                name = signal.Signals(exc.signum).name
                raise Interrupted(
                    f"interrupted by {name} before the run started; nothing was written", exc.signum
                ) from None
            line = interrupted_line(
                exc.signum, exc.run_dir, config.job.num_samples, resume_command(command, exc.run_dir)
            )
            raise Interrupted(line, exc.signum, exc.run_dir) from None
    result = RunResult.load(launched.run_dir, wall_s=launched.wall_s)
    if summary is not None:
        summary(config, result.run_dir)
    return result


def _on_torchrun(
    config: RunConfig,
    plan: ResumePlan | None,
    world: World,
    command: str,
    summary: Summary | None,
    exit_when_done: bool,
    speaks: bool,
) -> RunResult:
    rank, size = world[0], world[1]
    run_dir = None if plan is None else plan.run_dir
    code: int | None = None
    try:
        received = catch_stop_signals()  # inside the `try`: a signal from the moment it is caught is a StopSignal here
        if speaks:  # rank 0, unless the caller asked for no notices
            _announce(config, size)
        config = check(config)  # every rank checks its own inputs, so a bad flag fails fast everywhere
        if plan is None:
            check_output_dir(config.output.output_dir)
        if plan is not None and rank == 0:
            _restart(plan)
        code, run_dir = torchrun_main(
            config, run_dir=run_dir, indices=None if plan is None else plan.remaining, received=received
        )
        stop_raising()  # the stage is over: a signal from here on (torchrun stopping the others) is only noted
    except StopSignal as stop:  # before the stage started or after it ended: nothing more to write
        code = 128 + stop.signum if code is None else code
    finally:
        if not exit_when_done:
            give_back_signals()  # the caller's own Ctrl-C handling again, also after a bad option
    if code == 0 and rank == 0 and summary is not None:
        summary(config, run_dir)
    line = None
    if code > 128:
        line = (
            interrupted_line(code - 128, run_dir, config.job.num_samples, resume_command(command, run_dir, world))
            if run_dir is not None
            else f"interrupted by {signal.Signals(code - 128).name} before the run started"
        )
    if exit_when_done:
        if line is not None and run_dir is not None and rank == _writer_rank(config, size):
            # torchrun speaks for the run (its own exit code and message); the stage that wrote
            # the samples adds the one line only it can give.
            error_line(line)
        leave(code)  # flush, os._exit: see the module docstring
    if code > 128:
        raise Interrupted(line, code - 128, run_dir)
    if code != 0:
        raise StageFailedError(f"stage {rank} ended with exit code {code}; the failing stage's reason is printed above")
    return RunResult.load(run_dir)


def _resume_plan(run_dir: Path, given: RunConfig, explicit: Mapping[str, str], world: World | None) -> ResumePlan:
    saved = load_run_config(run_dir)
    # Under torchrun the world size is torchrun's; any N gives the same samples.
    config = merge(run_dir, saved, given, dict(explicit), keep_given=("nproc",) if world is not None else ())
    return plan_resume(run_dir, config.validate())


def _restart(plan: ResumePlan) -> None:
    """Before a resumed run: sweep what killed writers left, and journal exactly the kept samples."""
    remove_temp_files(plan.run_dir)
    try:
        restart_journal(plan.run_dir, plan.kept)
    except OSError as exc:  # a read-only or full file system, a directory made read-only
        raise ConfigError(
            f"--resume {plan.run_dir}: cannot write there ({exc.strerror or type(exc).__name__}); "
            "make room or make it writable, then resume again"
        ) from None
    notice(
        f"resuming {plan.run_dir}: {len(plan.kept)} of {plan.config.job.num_samples} samples kept, "
        f"{len(plan.remaining)} to generate"
    )


def _writer_rank(config: RunConfig, world: int) -> int:
    return world - 1 if config.layout.strategy == "pipeline" else 0


def interrupted_line(signum: int, run_dir: Path, num_samples: int, resume_with: str) -> str:
    """The one line an interrupted run leaves: what is kept and how to go on."""
    name = signal.Signals(signum).name
    if not Path(run_dir).is_dir():  # stopped while starting: the launcher removed the empty run directory
        return f"interrupted by {name} before the run started; nothing was written"
    if not (Path(run_dir) / "config.json").is_file():  # stopped while starting: nothing to continue
        return f"interrupted by {name} before the run started; nothing was kept in {run_dir}"
    kept = len(listed_entries(run_dir))
    return (
        f"interrupted by {name}: {kept} of {num_samples} samples finished and kept in "
        f"{run_dir}; resume with: {resume_with}"
    )


def resume_command(command: str, run_dir: Path, world: World | None = None) -> str:
    """The command line that continues run_dir: `ppsvd run --resume DIR`, or its torchrun form."""
    tail = f"-m ppsvd {command} --resume {shlex.quote(str(run_dir))}"
    if world is None:
        return f"ppsvd {command} --resume {shlex.quote(str(run_dir))}"
    _, size, _, local = world
    if size == local:
        return f"torchrun --standalone --nproc_per_node={local} {tail}"
    return f"torchrun --nnodes={size // max(local, 1)} --nproc_per_node={local} <your rendezvous options> {tail}"


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Ctrl-C, SIGTERM or SIGHUP while checking inputs or loading: one line and 128 + signum (the
    elastic agent installs its own handlers once the workers start; launch maps those; Typer
    would turn a KeyboardInterrupt into a silent exit code 130). The caller's own handlers come
    back afterwards. Signal handlers belong to the main thread: elsewhere this does nothing."""

    def handler(signum, _frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _announce(config: RunConfig, world: int) -> None:
    """Notices before a run: input images it skips, an uneven even split, the transport it picked."""
    skipped = skipped_images(config)
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        notice(
            f"--num-samples {config.job.num_samples} uses the first {config.job.num_samples} of "
            f"{len(config.job.input_images)} input images; skipped: {shown} (drop --num-samples for one video per "
            "image)"
        )
    if config.layout.strategy == "pipeline" and config.layout.partition == "even":  # auto and sizes are chosen splits
        text = partition_steps(config.job.total_steps, world).notice()
        if text:
            notice(text)
    if config.transport.transport is None and world > 1 and config.layout.strategy == "pipeline":
        say(config, f"transport: {config.resolved_transport} (pick another with --transport)")


def say(config: RunConfig, text: str) -> None:
    """A line about the run on stdout; with --log-format json a JSON line ({"event": "notice",
    "message": ...}), so that stdout holds JSON lines only and every line parses."""
    if config.ui.log_format == "json":
        print(json.dumps({"event": "notice", "message": text}), flush=True)
    else:
        out.print(text, style="dim", soft_wrap=True)
