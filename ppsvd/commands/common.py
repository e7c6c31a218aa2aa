"""What `run` and `simulate` share: check the config, then launch workers or join torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ppsvd.api import resolve_device, resolve_nproc, resolve_strategy  # noqa: F401  (one definition, shared with the API)
from ppsvd.config import RunConfig, env_world
from ppsvd.console import error_line, notice, out
from ppsvd.errors import ConfigError, Interrupted
from ppsvd.io.atomic import check_output_dir


def execute(
    config: RunConfig, *, command: str = "run", resume: Path | None = None, explicit: dict[str, str] | None = None
) -> int:
    """Validate, then run: as one torchrun worker, or by launching config.nproc local workers.

    resume: a stopped run's directory: its config (with the execution options `explicit` names:
    RunConfig field -> flag) and only the samples it lacks. The directory must be a run directory,
    and is locked (by the launching process, or torchrun's rank 0) before anything is read from it."""
    world = env_world()
    if resume is None:
        return _execute(config, command, None, explicit or {}, world)
    from ppsvd.io.resume import hold
    from ppsvd.io.rundir import read_marker

    if world is not None and world[0] != 0:
        read_marker(resume)  # rank 0 holds the lock for the run
        return _execute(config, command, resume, explicit or {}, world)
    lock = hold(Path(resume))
    try:
        return _execute(config, command, resume, explicit or {}, world)
    finally:
        lock.release()


def _execute(config: RunConfig, command: str, resume: Path | None, explicit: dict[str, str], world) -> int:
    from ppsvd.io.sources import record_sources
    from ppsvd.models.base import preflight

    plan = _resume_plan(resume, config, explicit, world) if resume is not None else None
    if plan is not None:
        config = plan.config
    config = resolve_strategy(config, world, announce=world is None or world[0] == 0)
    config.validate()
    if plan is not None and plan.finished:
        if world is None or world[0] == 0:
            out.print(f"nothing to do: all {config.job.num_samples} samples of {plan.run_dir} are finished")
        return 0
    run_dir = None if plan is None else plan.run_dir
    indices = None if plan is None else plan.remaining
    if world is not None:
        from ppsvd.runtime.worker import StopSignal, catch_stop_signals, torchrun_main

        rank = world[0]
        received = catch_stop_signals()
        try:
            if rank == 0:
                _announce(config, world[1])
            # Every rank checks its own inputs, so a bad flag fails fast everywhere.
            config = record_sources(config)  # absolute image paths, digests (a changed image: refused)
            preflight(config)
            if plan is None:
                check_output_dir(config.output.output_dir)  # after the input checks: bad input creates nothing
            if plan is not None and rank == 0:
                _restart(plan)
            code, run_dir = torchrun_main(config, run_dir=run_dir, indices=indices, received=received)
        except StopSignal as stop:  # before the stage started: nothing written, nothing to say
            code = 128 + stop.signum
        if code == 0 and rank == 0:
            _summary(config, run_dir)
        if code > 128 and run_dir is not None and rank == _writer_rank(config, world[1]):
            # torchrun speaks for the run (its own exit code and message); the stage that wrote
            # the samples adds the one line only it can give.
            error_line(
                interrupted_line(code - 128, run_dir, config.job.num_samples, _resume_command(command, run_dir, world))
            )
        # Leave the way a multiprocessing worker does: flush, then os._exit. A normal interpreter
        # shutdown runs the C++ destructors of gloo's groups and threads, and under torchrun that
        # aborted a finished run now and then ("terminate called without an active exception",
        # SIGABRT), turning success into a failure. Every output is already written and fsync'ed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    from ppsvd import api

    _catch_signals_until_launch()
    config = api.check(config)  # devices, model files and shapes, images (recorded: paths, digests), memory
    if plan is None:
        check_output_dir(config.output.output_dir)  # after the input checks: bad input creates nothing
    _announce(config, config.layout.nproc)
    if plan is not None:
        _restart(plan)
    try:
        result = api.execute(config, checked=True, run_dir=run_dir, indices=indices)
    except Interrupted as exc:
        if exc.run_dir is None:
            raise
        line = interrupted_line(
            exc.signum, exc.run_dir, config.job.num_samples, _resume_command(command, exc.run_dir, None)
        )
        raise Interrupted(line, exc.signum, exc.run_dir) from None
    _summary(config, result.run_dir)
    return 0


# CLI parameter -> the RunConfig field it sets, where the names differ.
_PARAM_FIELDS = {
    "image": "images",
    "timeout": "timeout_s",
    "no_progress": "show_progress",
    "num_frames": "latent_shape",
    "height": "latent_shape",
    "width": "latent_shape",
    "num_inference_steps": "total_steps",
    "stall_timeout": "stall_timeout_s",
    "progress_interval": "progress_interval_s",
}


def explicit_options(ctx) -> dict[str, str]:
    """The options this command line (or the environment) set: RunConfig field -> flag."""
    found = {}
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name) if param.name else None
        # By name: Typer may vendor its own click, whose ParameterSource is another enum.
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            found[_PARAM_FIELDS.get(param.name, param.name)] = param.opts[0] if param.opts else param.name
    return found


def _resume_plan(run_dir: Path, given: RunConfig, explicit: dict[str, str], world):
    from ppsvd.io.resume import load_run_config, merge, plan_resume

    saved = load_run_config(run_dir)
    # Under torchrun the world size is torchrun's; any N gives the same samples.
    config = merge(Path(run_dir), saved, given, explicit, keep_given=("nproc",) if world is not None else ())
    return plan_resume(Path(run_dir), config.validate())


def _restart(plan) -> None:
    """Before a resumed run: sweep what killed writers left, and journal exactly the kept samples."""
    from ppsvd.io.atomic import remove_temp_files
    from ppsvd.io.results import restart_journal

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


def interrupted_line(signum: int, run_dir: Path, num_samples: int, resume_command: str) -> str:
    """The one line an interrupted run leaves: what is kept and how to go on."""
    import signal

    from ppsvd.io.results import listed_entries

    name = signal.Signals(signum).name
    if not Path(run_dir).is_dir():  # stopped while starting: the launcher removed the empty run directory
        return f"interrupted by {name} before the run started; nothing was written"
    if not (Path(run_dir) / "config.json").is_file():  # stopped while starting: nothing to continue
        return f"interrupted by {name} before the run started; nothing was kept in {run_dir}"
    kept = len(listed_entries(run_dir))
    return (
        f"interrupted by {name}: {kept} of {num_samples} samples finished and kept in "
        f"{run_dir}; resume with: {resume_command}"
    )


def _resume_command(command: str, run_dir: Path, world) -> str:
    import shlex

    tail = f"-m ppsvd {command} --resume {shlex.quote(str(run_dir))}"
    if world is None:
        return f"ppsvd {command} --resume {shlex.quote(str(run_dir))}"
    _, size, _, local = world
    if size == local:
        return f"torchrun --standalone --nproc_per_node={local} {tail}"
    return f"torchrun --nnodes={size // max(local, 1)} --nproc_per_node={local} <your rendezvous options> {tail}"


def _catch_signals_until_launch() -> None:
    """Ctrl-C, SIGTERM or SIGHUP while checking inputs or loading: one line and 128 + signum (the
    elastic agent installs its own handlers once the workers start; launch maps those). Typer
    would turn a KeyboardInterrupt into a silent exit code 130."""
    import signal

    def handler(signum, _frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}", signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def _summary(config: RunConfig, run_dir) -> None:
    """The per-stage table, or with --log-format json one JSON line (the metrics and the run dir)."""
    if config.ui.log_format == "json":
        import json

        from ppsvd.api import RunResult

        print(
            json.dumps(
                {"event": "summary", "run_dir": str(run_dir), "metrics": RunResult.load(run_dir).metrics.to_json()}
            ),
            flush=True,
        )
        return
    from ppsvd.commands.tables import print_summary

    print_summary(run_dir)


def _announce(config: RunConfig, world: int) -> None:
    from ppsvd.plan import partition_steps

    skipped = config.skipped_images()
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        notice(
            f"--num-samples {config.job.num_samples} uses the first {config.job.num_samples} of {len(config.input_images)} input images; "
            f"skipped: {shown} (drop --num-samples for one video per image)"
        )

    if config.layout.strategy == "pipeline" and config.layout.partition == "even":  # auto and sizes are chosen splits
        text = partition_steps(config.job.total_steps, world).notice()
        if text:
            notice(text)
    if config.transport.transport is None and world > 1 and config.layout.strategy == "pipeline":
        out.print(f"transport: {config.resolved_transport} (pick another with --transport)", style="dim")
