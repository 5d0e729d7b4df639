"""The command line: each command parses, calls `api`, renders. Errors become one line on
stderr and an exit code here, in one place; a user never sees a traceback for bad input.
Each command imports `api` and what it renders inside its function, so that `modelforge --help`
and a mistyped command answer at once."""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from pathlib import Path

import click

from modelforge.errors import ModelforgeError

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


def _interrupt(signum, frame):  # noqa: ANN001 - signal handler
    raise KeyboardInterrupt


def _one_line(text: object) -> str:
    return " ".join(str(text).split("\n"))


def _handle_errors(function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        # SIGTERM (kill, systemd, CI timeouts) and SIGHUP (a closed terminal) clean up as Ctrl-C does:
        # their default action would leave scratch directories and an orphaned export worker behind.
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
        try:
            return function(*args, **kwargs)
        except ModelforgeError as error:
            click.echo(f"error: {_one_line(error)}", err=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: finished steps are kept in the store; temporaries were removed", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as error:
            # Outside the store (which reports its own): a path given on the command line, dist/, lock/.
            where = f" ({error.filename})" if error.filename else ""
            click.echo(f"error: {_one_line(error.strerror or error)}{where}; check the path, its permissions and free space", err=True)
            sys.exit(1)
        except Exception as error:
            if os.environ.get("MODELFORGE_DEBUG"):
                raise
            click.echo(
                f"error: internal error ({type(error).__name__}: {_one_line(error)[:200]}); this is a modelforge bug: "
                "run again with MODELFORGE_DEBUG=1 for the traceback and report it",
                err=True,
            )
            sys.exit(EXIT_INTERNAL)
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    return wrapper


# Options defined once, used by several commands (pip-tools' pattern).
manifest_argument = click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
source_dir_option = click.option(
    "--source-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Use this local copy of the source instead of fetching it (checked against the lock).",
)
cache_option = click.option(
    "--cache", default=None, metavar="URL",
    help="The shared remote cache: s3://, gs://, az:// or file:// URL ('' for none; default: env MODELFORGE_CACHE, "
    "else cache.url in modelforge.toml).",
)
store_option = click.option(
    "--store", "store_dir", type=click.Path(file_okay=False, path_type=Path), envvar="MODELFORGE_STORE", default=None,
    help="The content-addressed store (default: the user cache directory; env MODELFORGE_STORE).",
)


class RichReporter:
    """Renders executor events on stderr: one line per step, a progress bar for long ones."""

    def __init__(self, verbose: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False)
        # A log file or a CI log has no width: wrapping at rich's default 80 columns would break
        # lines mid-phrase. A terminal wraps at word boundaries, as rich does.
        self.console.soft_wrap = not self.console.is_terminal
        self.verbose = verbose
        self._progress = None
        self._task = None
        self._current = None

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def step_started(self, name: str, kind: str, reason: str) -> None:
        self._stop()
        self._current = name
        self.console.print(f"[bold]run[/bold]    {name} ({kind}) — {reason}")

    def step_progress(self, name: str, done: int, total: int, message: str) -> None:
        # Not on a terminal there is nothing to redraw: a transient bar would leave a blank line behind.
        if total <= 0 or not self.console.is_terminal:
            return
        if self._progress is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            self._progress = Progress(
                TextColumn("         {task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(message, total=total)
        self._progress.update(self._task, completed=done, total=total, description=message)

    def step_finished(self, name: str, ran: bool, seconds: float) -> None:
        self._stop()
        if ran:
            self.console.print(f"[green]done[/green]   {name} in {seconds:.1f}s")
        elif self.verbose and getattr(self, "_pulled", None) != name:
            self.console.print(f"[dim]cached {name}[/dim]")

    def step_pulled(self, name: str, kind: str, size: int) -> None:
        self._stop()
        self._pulled = name  # its step_finished says nothing more
        self.console.print(f"[cyan]pulled[/cyan] {name} ({kind}) from the remote cache, {size / 2**20:.1f} MiB, re-hashed")

    def message(self, text: str) -> None:
        self._stop()
        self.console.print(f"         {text}")


@click.group()
@click.version_option(package_name="modelforge")
def main() -> None:
    """modelforge: reproducible builds of edge AI models from a YAML manifest."""


@main.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path), metavar="MANIFEST...")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where targets are materialized (default: dist/<manifest name>/; one manifest only).")
@source_dir_option
@store_option
@click.option("--frozen", is_flag=True, help="Refuse to build if the lockfile is out of date; do not rewrite it.")
@cache_option
@click.option("--cache-read-only", is_flag=True, help="Pull from the remote cache but never push (untrusted builds: pull requests).")
@click.option(
    "--memory-limit", default=None, metavar="SIZE",
    help="Memory a step may use, e.g. 16GiB or 16GB (default: env MODELFORGE_MEMORY_LIMIT, else the physical memory); "
    "a step predicted to need more is refused before anything runs (with --executor ray, each node's memory instead).",
)
@click.option(
    "--disk-limit", default=None, metavar="SIZE",
    help="Free disk the build may fill, e.g. 40GiB or 40GB (default: env MODELFORGE_DISK_LIMIT, else the free space of the store's "
    "filesystem, and of dist/'s when another); a build predicted to write more is refused before anything runs.",
)
@click.option(
    "--store-budget", default=None, metavar="SIZE",
    help="Size the store should keep to, e.g. 25GB (default: env MODELFORGE_STORE_BUDGET, else none): while it is over, the build drops "
    "the objects of intermediate steps once nothing more reads them, quick-to-remake ones first, float exports last; records, targets and "
    "checks stay, so a rebuild runs nothing. See docs/store.md.",
)
@click.option(
    "--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
    help="Where steps run: this machine, or a Ray cluster (each step a task placed by its predicted peak memory; "
    "outputs travel through the remote cache, which must be set; needs `pip install 'modelforge[ray]'`).",
)
@click.option("--address", default=None, metavar="HOST:PORT", help="The Ray cluster's head (default: env RAY_ADDRESS, else the cluster started on this machine).")
@click.option(
    "--sign-key", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="KEY.pem",
    help="EC P-256/384/521 private key (PEM) that signs each target's provenance and files (default: env MODELFORGE_PROVENANCE_KEY; "
    "none: the provenance is written unsigned). See docs/provenance.md.",
)
@_handle_errors
def build(
    manifests: tuple[Path, ...], out: Path | None, source_dir: Path | None, store_dir: Path | None, frozen: bool, cache: str | None,
    cache_read_only: bool, memory_limit: str | None, disk_limit: str | None, store_budget: str | None, executor: str, address: str | None,
    sign_key: Path | None,
) -> None:
    """Build every target of each MANIFEST, reusing what the store (then the remote cache) already has."""
    from modelforge import api
    from modelforge.api.attesting import check_signing_ready
    from modelforge.provenance import KEY_ENV

    if address is not None and executor != "ray":
        raise click.UsageError("--address names a Ray cluster; add --executor ray")
    if sign_key is not None:
        os.environ[KEY_ENV] = str(sign_key.absolute())  # the build's attest hook reads it
    check_signing_ready()
    results = api.build_many(
        list(manifests), out=out, source_dir=source_dir, store_dir=store_dir, frozen=frozen, reporter=RichReporter(), memory_limit=memory_limit,
        disk_limit=disk_limit, store_budget=store_budget, cache=cache, cache_read_only=cache_read_only, executor=executor, address=address,
    )
    for result in results:
        pulled = f" ({len(result.pulled)} pulled from the remote cache)" if result.pulled else ""
        click.echo(f"built {len(result.plan.targets)} target(s) into {result.out_dir}: {len(result.ran)} step(s) ran, {len(result.cached)} cached{pulled}")
        for line in check_lines(result.checks):
            click.echo(line)
        if result.lock_written:
            click.echo(f"wrote {result.project.lock_path}")
        if result.project.manifest.notice:
            click.echo(f"note: {result.project.manifest.notice}")


def check_lines(checks: dict) -> list[str]:
    """One line per recorded check (the lock's `checks`): the parity figures against their
    thresholds, and what the architecture check compared."""
    from modelforge.figures import ERROR_FLOORS, RATIO_FLOORS, SIMILARITY_FLOORS, stable_report
    from modelforge.steps.parity import FIGURES

    lines = []
    for name, report in sorted(checks.items()):
        report = stable_report(report)
        if "architecture" in report:
            tied = f"; tied, so absent: {', '.join(report['tied_absent'])}" if report.get("tied_absent") else ""
            lines.append(f"checked {name}: {report['tensors']} tensors fit {report['architecture']}{tied}")
            continue
        if "rope_check" in report:  # recorded only when they passed: a mismatch fails the export
            rope, gains = report["rope_check"], report.get("gain_check")
            lines.append(
                f"checked {name}: RoPE caches equal transformers' over {rope['positions']} positions "
                f"(max |difference| ≤ {max(rope['max_abs'].values()):.2g}, tolerance {rope['tolerance']})"
                + (f"; {gains['gains']} norm gains equal its float32 ones" if gains else "")
            )
            continue
        figures = []
        for key, label, threshold, sign, style in FIGURES:
            if report.get(key) is None:
                continue
            limit = report.get("thresholds", {}).get(threshold)
            bound = "≤ " if key in ERROR_FLOORS or key in RATIO_FLOORS else "≥ " if key in SIMILARITY_FLOORS else ""
            figures.append(f"{label} {bound}{report[key]:{style}}" + (f" ({sign} {limit})" if limit is not None else ""))
        verdict = "passed" if report.get("passed") else "FAILED"
        lines.append(f"parity {name}: {verdict}: {', '.join(figures)}")
    return lines


@main.command()
@manifest_argument
@source_dir_option
@store_option
@cache_option
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--store-budget", default=None, metavar="SIZE", help="Count the disk as a build with this store budget would use it (see build --store-budget).")
@_handle_errors
def plan(manifest: Path, source_dir: Path | None, store_dir: Path | None, cache: str | None, as_json: bool, store_budget: str | None) -> None:
    """Show what `build` would run (or pull from the remote cache), and why. Imports no model library."""
    from modelforge import api

    report = api.plan(manifest, source_dir=source_dir, store_dir=store_dir, cache=cache, store_budget=store_budget)
    if as_json:
        import json

        click.echo(json.dumps({
            "manifest": report.project.manifest.name,
            "steps": [
                {"name": s.name, "kind": s.kind, "key": s.key, "cached": s.cached, "reason": s.reason, "remote": s.remote} for s in report.statuses
            ],
            "targets": {t.name: t.node for t in report.plan.targets},
            "coverage": report.plan.facts["coverage"],
            "memory": report.plan.facts.get("memory", {}),
            "disk": _disk_json(report),
            "planned_from": report.planned_from,
        }, indent=2, sort_keys=True))
        return
    coverage = report.plan.facts["coverage"]
    if report.planned_from:
        click.echo(
            f"planned offline from reference data: the Hub cannot be reached and nothing is cached, so this plan uses {report.planned_from}. "
            "Tensors, coverage and memory are the checkpoint's; file hashes are stand-ins, so no step key is shown. "
            "To build, make the Hub reachable or pass --source-dir DIR with a local download."
        )
    click.echo(f"{report.project.manifest.name}: {coverage['tensors']} source tensors, {coverage['kept']} kept, {coverage['dropped']} dropped")
    # Columns as wide as their longest entry: a fixed width overflowed on names like bundle.quantize.vision_encoder.
    name_width = max([len(status.name) for status in report.statuses] + [len(name) for name in report.plan.facts.get("memory", {})] + [1])
    kind_width = max([len(status.kind) for status in report.statuses] + [1])
    for status in report.statuses:
        state = "cached" if status.cached else ("pull  " if status.remote else "run   ")
        key = "(reference) " if report.planned_from else status.key[:12]
        reason = "planned from reference data" if report.planned_from else status.reason
        click.echo(f"  {state} {status.name:<{name_width}} {status.kind:<{kind_width}} {key}  {'' if status.cached else reason}".rstrip())
    for target in report.plan.targets:
        click.echo(f"  target {target.name} ({target.kind}) ← {target.node}")
    if report.plan.facts.get("memory"):
        from modelforge.memory import memory_limit

        limit, origin = memory_limit()
        for name, peak in report.plan.facts["memory"].items():
            verdict = f"; `build` would refuse it (limit {limit / 2**30:.1f} GiB: {origin})" if peak > limit else ""
            click.echo(f"  memory {name:<{name_width}} predicted peak {peak / 2**30:.1f} GiB (this machine: {limit / 2**30:.1f} GiB){verdict}")
    for line in _disk_lines(report, name_width):
        click.echo(line)


def _disk_lines(report, name_width: int) -> list[str]:
    """Per heavy step that would run (one with a memory prediction, or writing 64 MiB or more), the
    bytes it adds to the store; then what the build needs free and the store's size after it."""
    from modelforge.disk import LINK_FROM, disk_limit, size_text

    need, steps = report.disk, report.plan.facts.get("disk", {}).get("steps", {})
    if need is None:
        return []
    pending = {status.name for status in report.statuses if not status.cached}
    heavy = set(report.plan.facts.get("memory", {})) | {name for name, size in steps.items() if size >= LINK_FROM}
    lines = [
        f"  disk   {name:<{name_width}} writes about {size_text(size)} to the store"
        for name, size in steps.items() if name in pending and name in heavy
    ]
    limit, origin = disk_limit(report.store_root)
    free = f"free there: {size_text(limit)}" if origin == "free space" else f"{origin}: {size_text(limit)}"
    verdict = f" ({free}; `build` would refuse it)" if need.total > limit else f" ({free})"
    lines.append(
        f"  disk   the build needs about {size_text(need.total)} free: {size_text(need.store)} of new store objects"
        + (f" (at most {size_text(need.peak)} at once with a step's temporaries)" if need.peak > need.store else "")
        + f", {size_text(need.dist)} copied into dist/{verdict}; the store grows from {size_text(need.store_now)} to about {size_text(need.store_after)}"
        + (f" (budget {size_text(need.budget)}: intermediates are dropped once read, float exports last)" if need.budget is not None else "")
    )
    return lines


def _disk_json(report) -> dict:
    need = report.disk
    figures = {"steps": report.plan.facts.get("disk", {}).get("steps", {})}
    if need is not None:
        figures |= {"need_bytes": need.total, "store_bytes": need.store, "peak_store_bytes": need.peak, "dist_bytes": need.dist, "store_bytes_now": need.store_now,
                    "store_bytes_after": need.store_after, "store_budget_bytes": need.budget}
    return figures


@main.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@source_dir_option
@store_option
@click.option("--check", is_flag=True, help="Fail if a lockfile is missing or out of date; write nothing.")
@_handle_errors
def lock(manifests: tuple[Path, ...], source_dir: Path | None, store_dir: Path | None, check: bool) -> None:
    """Write lock/<name>.lock for each MANIFEST without building."""
    from modelforge import api

    from modelforge.errors import LockError
    from modelforge.lock import PENDING, read_lock

    stale = []
    for manifest in manifests:
        try:
            path, written = api.lock(manifest, source_dir=source_dir, store_dir=store_dir, check=check, reporter=RichReporter(verbose=False))
        except LockError as error:
            if not check:
                raise
            # Every stale manifest is named, not only the first (a pre-commit hook passes them all).
            click.echo(f"error: {_one_line(error)}", err=True)
            stale.append(manifest)
            continue
        pending = " (source files pending first access to the Hub)" if read_lock(path).source.status == PENDING else ""
        if check:
            click.echo(f"{path} is up to date{pending}")
        else:
            click.echo(f"{'wrote' if written else 'unchanged'} {path}{pending}")
    if stale:
        raise LockError(f"{len(stale)} of {len(manifests)} lockfile(s) missing or out of date: {', '.join(map(str, stale))}; run `modelforge lock` on them and commit the locks")


@main.command()
@click.argument("lockfile", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None, help="The built outputs (default: dist/<name>/ beside lock/).")
@click.option("--sources", is_flag=True, help="Also re-hash the source files.")
@source_dir_option
@click.option(
    "--provenance", "provenance_dir", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
    help="Instead of a lock: check a downloaded target directory against its signed provenance and model.sig (offline).",
)
@click.option(
    "--key", "public_key", type=click.Path(dir_okay=False, path_type=Path), envvar="MODELFORGE_PROVENANCE_PUBLIC_KEY", default=None,
    metavar="PUB.pem", help="With --provenance: the publisher's EC public key (default: env MODELFORGE_PROVENANCE_PUBLIC_KEY).",
)
@_handle_errors
def verify(
    lockfile: Path | None, artifacts: tuple[Path, ...], directory: Path | None, sources: bool, source_dir: Path | None,
    provenance_dir: Path | None, public_key: Path | None,
) -> None:
    """Re-hash artifacts (and sources) against LOCKFILE; non-zero exit on any mismatch.

    With ARTIFACTS (files or directories someone downloaded or published), check those instead of
    dist/: a file by its name, a directory as the target it matches. With --provenance DIR, no
    lock: DIR's signed provenance and model.sig, checked with the publisher's --key."""
    from modelforge import api

    if provenance_dir is not None:
        if lockfile is not None:
            raise click.UsageError("--provenance checks a downloaded directory without a lock; give no LOCKFILE")
        _verify_provenance(provenance_dir, public_key)
        return
    if lockfile is None:
        raise click.UsageError("give a LOCKFILE, or --provenance DIR --key PUB.pem for a downloaded target")
    if artifacts:
        problems = api.verify_artifacts(lockfile, list(artifacts))
    else:
        problems = api.verify(lockfile, directory=directory, sources=sources, source_dir=source_dir)
    _report_mismatches(problems, f"do not match {lockfile}; rebuild with `modelforge build` or find out who changed them")
    click.echo(f"ok: every file matches {lockfile}")


def _verify_provenance(directory: Path, public_key: Path | None) -> None:
    from modelforge.api.attesting import verify_provenance
    from modelforge.errors import ProvenanceError

    if public_key is None:
        raise ProvenanceError(
            f"{directory}: which key should have signed it? pass the publisher's public key with --key PUB.pem "
            "(a key shipped beside the files proves nothing)"
        )
    report = verify_provenance(directory, public_key)
    click.echo(f"source:   {report.source}")
    click.echo(f"manifest: {report.manifest_path} (sha256 {report.manifest_digest})")
    click.echo(f"signer:   {report.signer} (builder {report.builder})")
    for line in check_lines(report.checks):
        click.echo(line)
    click.echo(f"ok: {report.files} file(s) of target {report.target} match the provenance signed by {report.signer}; model.sig verifies")


def _report_mismatches(problems, advice: str) -> None:
    for problem in problems:
        click.echo(f"MISMATCH {problem.path}: {problem.problem}", err=True)
    if problems:
        click.echo(f"error: {len(problems)} file(s) {advice}", err=True)
        sys.exit(6)


@main.command()
@manifest_argument
@click.option("--rebuild", is_flag=True, help="Rebuild from scratch in a fresh store and compare with the lock (the only mode, and the default).")
@source_dir_option
@_handle_errors
def check(manifest: Path, rebuild: bool, source_dir: Path | None) -> None:
    """Prove reproducibility: rebuild MANIFEST in an empty store and compare byte for byte with its lock.

    A rebuild is the only kind of check, so `--rebuild` may be left out."""
    from modelforge import api

    problems = api.check_rebuild(manifest, source_dir=source_dir, reporter=RichReporter(verbose=False))
    _report_mismatches(problems, "differ from the lock: the build is not reproducible here")
    click.echo("ok: a rebuild from scratch reproduces every locked file byte for byte")


@main.command()
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("schemas/manifest.schema.json"), show_default=True)
@click.option("--check", is_flag=True, help="Fail if the schema file is not current; write nothing.")
@_handle_errors
def schema(out: Path, check: bool) -> None:
    """(Re)generate the manifest's JSON Schema from the pydantic models."""
    from modelforge import api

    text = api.schema_text()
    current = out.read_text() if out.exists() else None
    if check:
        if current != text:
            click.echo(f"error: {out} is not current; run `modelforge schema`", err=True)
            sys.exit(2)
        click.echo(f"{out} is current")
        return
    if current != text:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        click.echo(f"wrote {out}")
    else:
        click.echo(f"unchanged {out}")


@main.command()
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", default=None, help="Git revision to compare MANIFEST with (default: the merge base with main).")
@click.option("--format", "output_format", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
@source_dir_option
@store_option
@_handle_errors
def diff(manifests: tuple[Path, ...], base: str | None, output_format: str, source_dir: Path | None, store_dir: Path | None) -> None:
    """Semantic diff: `diff MANIFEST [--base REV]` or `diff OLD.yaml NEW.yaml`.

    Exit status: 0 nothing would rebuild, 1 something would rebuild, 2+ an error."""
    from modelforge import diff as diffing

    temporary, old_lock = None, None
    try:
        if len(manifests) == 2:
            old, new = manifests
            old_label, new_label = str(old), str(new)
        elif len(manifests) == 1:
            new = manifests[0]
            revision = base or diffing.merge_base(new)
            old, old_label = diffing.manifest_at_revision(new, revision)
            temporary, new_label = old, f"{new} (working tree)"
            old_lock = diffing.lock_at_revision(new, revision)
        else:
            raise click.UsageError("give one manifest (with --base) or two (OLD NEW)")
        result = diffing.diff_manifests(old, new, old_label=old_label, new_label=new_label, store_dir=store_dir, source_dir=source_dir, old_lock=old_lock)
    finally:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    render = {"text": diffing.render_text, "markdown": diffing.render_markdown, "json": diffing.render_json}[output_format]
    click.echo(render(result), nl=False)
    sys.exit(1 if result.rebuilds else 0)


@main.command()
@click.argument("bundle", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; anything but loopback exposes the page to the network.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@click.option("--quiet", is_flag=True, help="Do not log requests.")
@_handle_errors
def serve(bundle: Path, host: str, port: int, quiet: bool) -> None:
    """Serve a web bundle locally with the headers it needs (COOP/COEP, CSP, immutable caching, ranges)."""
    from modelforge.web.serve import serve as start

    if not (bundle / "bundle.json").is_file():
        raise click.UsageError(f"{bundle} has no bundle.json; point at a built web_bundle target, e.g. dist/<name>/web")
    try:
        server = start(bundle, host=host, port=port, log=None if quiet else (lambda line: click.echo(line, err=True)))
    except OSError as error:
        raise click.UsageError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port") from None
    click.echo(f"serving {bundle} at {server.url} (Ctrl-C to stop)")
    try:
        server.wait()
    finally:
        server.close()



# ---------------------------------------------------------------------------------------- cache
project_option = click.option(
    "--project", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
    help="The project root (where modelforge.toml and lock/ are).",
)


@main.group()
def cache() -> None:
    """The shared remote cache: keys, push, pull, ls, verify, gc (see docs/team-cache.md)."""


@cache.command()
@click.argument("name")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where the private key goes (default: env MODELFORGE_SIGNING_KEY, else the user config directory); never inside a repository.")
@_handle_errors
def keygen(name: str, out: Path | None) -> None:
    """Make an ed25519 key pair for signing what this machine pushes; print the public key to trust."""
    from modelforge.api import caching

    path, public = caching.keygen(name, out)
    click.echo(f"wrote the private key {path} (mode 0600; keep it off the repository)")
    click.echo("trust it: add this line's key to modelforge.toml, under [cache]:")
    click.echo(f'trusted_keys = ["{public.text}"]')


@cache.command("push")
@click.argument("lockfiles", nargs=-1, required=True, type=click.Path(dir_okay=False, exists=True, path_type=Path))
@cache_option
@store_option
@_handle_errors
def cache_push(lockfiles: tuple[Path, ...], cache: str | None, store_dir: Path | None) -> None:
    """Push the steps of each LOCKFILE that the local store holds: objects, then signed records."""
    from modelforge.api import caching

    for lockfile in lockfiles:
        result = caching.push(lockfile, cache=cache, store_dir=store_dir)
        missing = f"; not pushed (not in the local store, or not built here): {', '.join(result.missing)}" if result.missing else ""
        click.echo(f"{lockfile}: {len(result.done)} step(s) pushed, {len(result.present)} already there{missing}")


@cache.command("pull")
@click.argument("lockfile", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@cache_option
@store_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where targets are laid out (default: dist/<manifest name>/).")
@click.option("--all", "every_step", is_flag=True, help="Pull every step of the lock, not only those that make its targets.")
@_handle_errors
def cache_pull(lockfile: Path, cache: str | None, store_dir: Path | None, out: Path | None, every_step: bool) -> None:
    """Pull what LOCKFILE's targets need and lay them out, checked against the lock: outputs without building."""
    from modelforge.api import caching

    result = caching.pull(lockfile, cache=cache, store_dir=store_dir, out=out, every_step=every_step, reporter=RichReporter())
    click.echo(f"pulled {len(result.done)} step(s), {len(result.present)} already local; targets in {result.out_dir}, matching {lockfile}")


@cache.command("ls")
@cache_option
@store_option
@project_option
@_handle_errors
def cache_ls(cache: str | None, store_dir: Path | None, project: Path) -> None:
    """List the remote's step records (key, kind, size, who signed it, which locks pin it), then the local
    store's records that builds no longer use (a revoked signer, or a writer unknown)."""
    from modelforge.api import caching

    for local in _unused_local(caching, project, store_dir):
        names = ", ".join(local.steps) or "(no lock here)"
        click.echo(f"local {local.key[:16]}  {local.kind:<20} not used: {local.problem}  {names}")
    if caching.remote_for(project, cache, read_only=True) is None:
        return
    entries = caching.ls(project, cache=cache)
    for entry in entries:
        names = ", ".join(entry.steps) or "(no lock here)"
        click.echo(f"{entry.key[:16]}  {entry.kind or '?':<20} {entry.size / 2**20:>9.1f} MiB  {entry.trust}  {names}")
    click.echo(f"{len(entries)} record(s)")


def _unused_local(caching, project: Path, store_dir: Path | None) -> list:
    return [entry for entry in caching.local_records(project, store_dir) if entry.problem is not None]


@cache.command("verify")
@cache_option
@project_option
@click.option("--delete-damaged", is_flag=True, help="Delete remote objects that do not hash to their names.")
@store_option
@_handle_errors
def cache_verify(cache: str | None, project: Path, delete_damaged: bool, store_dir: Path | None) -> None:
    """Re-hash every remote object and check every record's signature and objects; name the local
    store's records that builds no longer use (a revoked signer, or a writer unknown)."""
    from modelforge.api import caching

    for local in _unused_local(caching, project, store_dir):
        click.echo(f"NOT USED local steps/{local.key[:2]}/{local.key}.json ({local.kind}): {local.problem}", err=True)
    checked, problems = caching.verify_remote(project, cache=cache, delete_damaged=delete_damaged)
    for problem in problems:
        click.echo(f"DAMAGED {problem.path}: {problem.problem}", err=True)
    if problems:
        from modelforge.errors import RemoteError

        raise RemoteError(
            f"{len(problems)} problem(s) in the remote cache; builds ignore these entries and run the steps locally"
            + ("" if delete_damaged else "; `modelforge cache verify --delete-damaged` removes damaged objects")
        )
    click.echo(f"ok: {checked} object(s) re-hashed, every record signed by a trusted key with its objects present")


@cache.command("gc")
@click.option("--remote", "remote_too", is_flag=True, help="Collect the remote cache instead: records no lock under lock/ pins, and objects no remaining record names.")
@click.option("--older-than", default=None, metavar="AGE", help="Local: forget records unused for this long (90m, 12h, 30d).")
@click.option("--max-size", default=None, metavar="SIZE", help="Local: then forget the least recently used until the objects fit (50GiB).")
@click.option("--record-grace", default="7d", show_default=True, metavar="AGE", help="Remote: keep unpinned records younger than this (a teammate's branch may pin them).")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@cache_option
@store_option
@project_option
@_handle_errors
def cache_gc(
    remote_too: bool, older_than: str | None, max_size: str | None, record_grace: str, dry_run: bool, cache: str | None, store_dir: Path | None,
    project: Path,
) -> None:
    """Collect garbage: the local store by age and size, or (--remote) the remote cache by the locks under lock/."""
    from modelforge.api import caching
    from modelforge.memory import parse_size

    if remote_too:
        collected = caching.gc_remote(project, cache=cache, dry_run=dry_run, record_grace=caching.parse_duration(record_grace))
        where = "remote cache"
    else:
        if older_than is None and max_size is None:
            raise click.UsageError("say what to collect: --older-than AGE and/or --max-size SIZE (or --remote)")
        try:
            limit = parse_size(max_size) if max_size is not None else None
        except ValueError:
            raise click.UsageError(f"--max-size {max_size!r} is not a size (like 50GiB or 50GB)") from None
        collected = caching.gc_local(
            store_dir=store_dir, older_than=caching.parse_duration(older_than) if older_than else None, max_size=limit, dry_run=dry_run
        )
        where = "local store"
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{where}: {verb} {collected.records} record(s) and {collected.objects} object(s), {collected.bytes / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
