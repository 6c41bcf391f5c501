"""`optbench train|sample|export|eval|checkpoint|data|model|optim|bench|report|dashboard|compare|check-optimizer`:
parse, call the library, map UserError to exit code 2.

Run configuration goes through Hydra overrides (`optbench train model=llama optim.lr=3e-3`);
argparse only dispatches subcommands and their few flags.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from optbench.errors import UserError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (no usage dump) with exit code 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def cmd_train(args: argparse.Namespace) -> int:
    from optbench.config.compose import compose, to_yaml

    cfg = compose(args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return 0
    from optbench.training import distributed, train

    world = distributed.from_environment()
    summary = train(cfg)  # owns the process group under torchrun
    final = summary["final_val_loss"]
    loss = f"{final:.4f}" if final is not None else "n/a"
    if world.is_main:
        print(f"{summary['status']}: final val loss {loss} after {summary['steps']} steps "
              f"({summary['wall_s']:.0f} s); run written to {summary['run_dir']}")
    if summary["status"] == "interrupted":  # 128 + signal number, as a shell reports a process the signal stopped
        return 128 + signal.Signals[summary["signal"]].value
    return 0  # completed, or diverged: a sweep goes on and reads the status from summary.json


def cmd_sample(args: argparse.Namespace) -> int:
    from optbench.training.sample import sample_from_run

    print(sample_from_run(args.overrides))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from optbench.export import export_run

    exported = export_run(args.overrides)
    print(f"exported step {exported.step} as {exported.architecture} to {exported.out}; tokenizer: "
          f"{exported.tokenizer}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from optbench.downstream import eval_from_cli

    written, record = eval_from_cli(args.overrides)
    for task, entry in record["tasks"].items():
        metrics = ", ".join(f"{metric} {value:.4f}" + _stderr_text(entry["stderr"].get(metric))
                            for metric, value in entry["metrics"].items() if value is not None)
        print(f"{task}: {metrics} (n={entry['n_samples']})")
    print(f"step {record['step']} of the run evaluated; written to {written}")
    return 0


def _stderr_text(stderr: float | None) -> str:
    return "" if stderr is None else f" ± {stderr:.4f}"


def cmd_checkpoint_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench.training.convert import convert

    done = convert(Path(args.source), Path(args.out) if args.out else None)
    print(f"converted step {done.step} (world size {done.world_size}) from {done.source} to {done.out} "
          f"and {done.out.name}.sha256")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from optbench.config.compose import compose
    from optbench.data import prepare

    overrides = [f"data={args.name}"]
    for key in ("source", "tokenizer", "max_tokens", "root", "num_proc"):
        value = getattr(args, key)
        if value is not None:
            overrides.append(f"data.{key}={value}")
    prepared = prepare(compose(overrides).data, progress=True)
    counts = ", ".join(f"{split} {n:,}" for split, n in prepared.meta["tokens"].items())
    print(f"prepared {args.name} in {prepared.dir}: {counts} tokens, vocabulary {prepared.vocab_size:,}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from optbench.config.compose import compose
    from optbench.data import RECIPES, list_prepared

    root = compose([]).data.root
    prepared: dict[str, list[str]] = {}
    for entry in list_prepared(root):
        prepared.setdefault(entry["recipe"], []).append(entry["dir"])
    table = Table(title=f"data recipes (prepared under {root})")
    for column in ("name", "description", "tokenizer", "remote source", "prepared"):
        table.add_column(column, overflow="fold")
    for name, recipe in sorted(RECIPES.items()):
        remote = recipe.hub_data_files or " ".join(filter(None, (recipe.hub_path, recipe.hub_config)))
        table.add_row(name, recipe.description, recipe.tokenizer, remote, "\n".join(prepared.get(name, [])) or "-")
    Console().print(table)
    return 0


def cmd_model_list(args: argparse.Namespace) -> int:
    from optbench.models.presets import preset_table

    table = Table(title="model presets (parameters with the GPT-2 vocabulary, 50304 padded; active: "
                        "non-embedding parameters a token passes through)")
    for column in ("preset", "family", "layers", "heads", "width", "params", "non-embedding", "active"):
        table.add_column(column, justify="right" if column not in ("preset", "family") else "left", no_wrap=True)
    for row in preset_table():
        table.add_row(row["preset"], row["family"], str(row["n_layer"]), str(row["n_head"]), str(row["n_embd"]),
                      f"{row['params'] / 1e6:.1f}M", f"{row['params_non_embedding'] / 1e6:.1f}M",
                      f"{row['params_active'] / 1e6:.1f}M")
    Console(width=max(Console().width, 120)).print(table)
    return 0


def cmd_optim_list(args: argparse.Namespace) -> int:
    import dataclasses

    from optbench.optim import OPTIMIZERS

    adapters = sorted(name for name, spec in OPTIMIZERS.items() if spec.adapter)
    table = Table(title=f"{len(OPTIMIZERS) - len(adapters)} optimizers; adapters: {', '.join(adapters)}")
    for column in ("name", "defaults", "source", "reference"):
        table.add_column(column, overflow="fold")
    for name, spec in sorted(OPTIMIZERS.items()):
        defaults = ", ".join(f"{f.name}={getattr(spec.config_cls(), f.name)}"
                             for f in dataclasses.fields(spec.config_cls) if f.name != "name")
        table.add_row(name, defaults, spec.source, spec.reference)
    Console(width=max(Console().width, 160)).print(table)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    import optuna

    from optbench.bench import launch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study load is noise at this scale
    if args.smoke:
        return _bench_smoke(args)
    if args.worker is not None:  # one worker process started by a local bench (not for direct use)
        try:
            launch.run_worker(Path(args.out), args.storage, args.worker, args.threads)
        except KeyboardInterrupt:  # stopped by a signal; its trial checkpointed and went back to the queue
            return 128 + signal.SIGTERM.value
        return 0
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers={args.workers} must be positive")
    if args.slurm:
        launch.check_slurm()  # before the results folder exists
    suite, out, url = launch.prepare(args.suite, args.out, args.storage)
    print(f"bench {suite.name}: {len(suite.scenarios)} scenarios x {len(suite.optimizers)} optimizers, "
          f"{suite.tuning.method} tuning, final seeds {list(suite.final.seeds)}; results in {out}", flush=True)
    if args.slurm:
        jobs = launch.submit_slurm(suite, out, url, args.workers)
        print(f"submitted Slurm array {jobs[0].job_id.split('_')[0]} with {len(jobs)} workers; "
              f"run `optbench report {out}` when they finish")
        return 0
    try:
        launch.run_local(suite, out, url, args.workers)
    except launch.Stopped as stopped:  # 143 for SIGTERM, 130 for Ctrl-C, as `optbench train` exits
        print(f"stopped; run the same command again to continue ({out})", file=sys.stderr)
        return 128 + int(stopped.signum)
    _print_progress(launch.progress(suite, url))
    from optbench.report import write_report

    written = write_report(out)
    print(f"report written to {written['html']} and {written['markdown']}")
    return 0


def _bench_smoke(args: argparse.Namespace) -> int:
    """`optbench bench SUITE --smoke`: 0 when every run completed with a finite loss, else 1 (a suite that does
    not compose is a UserError, 2)."""
    from pathlib import Path

    from optbench.bench.smoke import run_smoke

    given = [flag for flag, value in (("--storage", args.storage), ("--workers", args.workers),
                                      ("--slurm", args.slurm or None), ("--worker", args.worker)) if value is not None]
    if given:
        raise UserError(f"--smoke trains here, one run after another, without a study: drop {', '.join(given)}")
    out = Path(args.out) if args.out else None
    try:
        outcomes = run_smoke(args.suite, out, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("smoke stopped", file=sys.stderr)
        return 128 + signal.SIGINT.value
    return 0 if all(outcome.ok for outcome in outcomes) else 1


def _print_progress(rows: list[dict]) -> None:
    import statistics

    table = Table(title="bench results (final val loss over seeds)")
    for column in ("scenario", "optimizer", "tuning trials", "final runs", "final val loss"):
        table.add_column(column)
    for row in rows:
        losses = row["final_losses"]
        loss = (f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}" if len(losses) > 1
                else f"{losses[0]:.4f}" if losses else "-")
        states = lambda counts: ", ".join(f"{n} {state}" for state, n in counts.items()) or "-"  # noqa: E731
        table.add_row(row["scenario"], row["optimizer"], states(row["tune"]), states(row["final"]), loss)
    Console().print(table)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench.report import write_report

    written = write_report(_results_folder(args.source), Path(args.out) if args.out else None)
    print(f"report written to {written['html']}, {written['markdown']} and {written['leaderboard_csv']}")
    return 0


def _results_folder(given: str):
    """A bench results folder from what the user typed: the folder itself, or a suite's name (bench/<name>)."""
    from pathlib import Path

    from optbench.bench import layout

    source = Path(given)
    if not source.is_dir() and len(source.parts) == 1 and layout.default_out(given).is_dir():
        source = layout.default_out(given)  # a suite's name, shipped or the user's own: bench/<name>
    if not source.is_dir():
        from optbench.bench.suite import resolve_path

        if source.suffix != ".yaml" and (len(source.parts) > 1 or given.startswith(".")):
            raise UserError(f"no results folder at {given}; give a results folder (the --out of "
                            "`optbench bench`) or a suite's name")
        resolve_path(given)  # a suite's name: its results are in bench/<name>
        source = layout.default_out(given)
        if not source.is_dir():
            raise UserError(f"no results for suite '{given}' in {source}; run `optbench bench {given}` "
                            "first or give the results folder")
    return source


def cmd_dashboard(args: argparse.Namespace) -> int:
    from optbench.bench import dashboard

    out = _results_folder(args.source) if args.source else None
    try:
        dashboard.serve(dashboard.storage_url(out, args.storage), args.host, args.port)
    except KeyboardInterrupt:
        return 0
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench.compare import write_comparison

    written = write_comparison([Path(p) for p in args.runs], Path(args.out) if args.out else None)
    print(f"comparison written to {written['html']} and {written['markdown']}")
    return 0


def cmd_check_optimizer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from optbench.check import check_optimizer
    from optbench.check.render import table, write_json

    report = check_optimizer(args.target, args.overrides, args.only or ())
    Console(width=max(Console().width, 140)).print(table(report))
    if args.json:
        write_json(report, Path(args.json))
    return report.exit_code  # 1 if a check failed; bad input never gets here (UserError, 2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="optbench", description=__doc__.splitlines()[0])
    parser.add_argument("--plugin", dest="plugins", action="append", default=[], metavar="PATH|MODULE",
                        help="a Python file or module registering optimizers or models, before the command "
                             "(repeatable; also OPTBENCH_PLUGINS and the optbench.plugins entry points)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train one model with one optimizer")
    train.add_argument("overrides", nargs="*", help="group=choice or key=value, e.g. model=llama optim.lr=3e-3")
    train.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    train.set_defaults(func=cmd_train)

    sample = commands.add_parser("sample", help="generate text from a run's checkpoint")
    sample.add_argument("overrides", nargs="*", help='run.dir=DIR prompt="..." max_new_tokens=200 '
                                                     "temperature=0.8 top_k=200 seed=0")
    sample.set_defaults(func=cmd_sample)

    export = commands.add_parser("export", help="write a run's model as a Hugging Face transformers folder")
    export.add_argument("overrides", nargs="*", help="run.dir=DIR out=DIR weights=model|averaged")
    export.set_defaults(func=cmd_export)

    evaluate = commands.add_parser("eval", help="run lm-evaluation-harness tasks on a run's checkpoint "
                                                "(the eval extra), into the run's downstream.json")
    evaluate.add_argument("overrides", nargs="*", help="run.dir=DIR tasks=hellaswag,arc_easy limit=N "
                                                       "batch_size=N num_fewshot=K device=auto tasks_dir=PATH "
                                                       "weights=model|averaged")
    evaluate.set_defaults(func=cmd_eval)

    ckpt = commands.add_parser("checkpoint", help="checkpoints of train.parallel=fsdp runs").add_subparsers(
        dest="checkpoint_command", required=True, parser_class=_Parser)
    convert = ckpt.add_parser("convert", help="write a sharded checkpoint as one torch.save file (with its sha256)")
    convert.add_argument("source", metavar="RUN_DIR|CHECKPOINT_DIR",
                         help="a run directory (its newest sharded checkpoint) or a checkpoints/step-N/ folder")
    convert.add_argument("--out", metavar="FILE", help="where to write (default: beside it, checkpoints/step-N.pt)")
    convert.set_defaults(func=cmd_checkpoint_convert)

    data = commands.add_parser("data", help="prepare and list datasets").add_subparsers(
        dest="data_command", required=True, parser_class=_Parser)
    prepare = data.add_parser("prepare", help="tokenize a recipe into memory-mapped token files")
    prepare.add_argument("name", help="recipe name (see `optbench data list`)")
    prepare.add_argument("--source", help="local file, folder or glob replacing the remote source")
    prepare.add_argument("--tokenizer", help="gpt2, char, or an HF tokenizer (hf:NAME or a tokenizer.json)")
    prepare.add_argument("--max-tokens", dest="max_tokens", type=int, help="cap on tokens per split")
    prepare.add_argument("--root", help="where prepared datasets live")
    prepare.add_argument("--num-proc", dest="num_proc", type=int, help="tokenizer processes")
    prepare.set_defaults(func=cmd_data_prepare)
    data.add_parser("list", help="recipes and what is prepared").set_defaults(func=cmd_data_list)

    model = commands.add_parser("model", help="model presets").add_subparsers(
        dest="model_command", required=True, parser_class=_Parser)
    model.add_parser("list", help="presets with parameter counts").set_defaults(func=cmd_model_list)

    optim = commands.add_parser("optim", help="optimizers").add_subparsers(
        dest="optim_command", required=True, parser_class=_Parser)
    optim.add_parser("list", help="optimizers, defaults and references").set_defaults(func=cmd_optim_list)

    bench = commands.add_parser("bench", help="tune and compare optimizers over a suite's scenarios")
    bench.add_argument("suite", help="a shipped suite (tiny, small, epfl-124m, s4s-stage1, s4s-stage2, pylo-gpt2, "
                                     "modded-soap) or a suite .yaml file")
    bench.add_argument("--out", help="results folder (default bench/<suite>); rerunning into it resumes")
    bench.add_argument("--storage", help="Optuna storage URL (default sqlite:///OUT/study.db; postgresql://... "
                                         "for workers on many machines)")
    bench.add_argument("--workers", type=int, help="parallel workers (default: the suite's execution.workers)")
    bench.add_argument("--slurm", action="store_true", help="submit the workers as a Slurm array via submitit")
    bench.add_argument("--worker", help=argparse.SUPPRESS)
    bench.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    bench.add_argument("--smoke", action="store_true",
                       help="compose every trial, then train each scenario x optimizer for a few CPU steps on a "
                            "debug-size model (into OUT/smoke, OUT default bench/<suite>-smoke); no study")
    bench.set_defaults(func=cmd_bench)

    report = commands.add_parser("report", help="leaderboard, plots and tables of a bench's results")
    report.add_argument("source", help="a suite name (reads bench/<suite>) or a bench results folder")
    report.add_argument("--out", help="where to write (default SOURCE/report)")
    report.set_defaults(func=cmd_report)

    board = commands.add_parser("dashboard", help="optuna-dashboard on a bench's studies, live while it runs "
                                                  "(the dashboard extra)")
    board.add_argument("source", nargs="?", help="a suite name (reads bench/<suite>) or a bench results folder")
    board.add_argument("--storage", help="the bench's Optuna storage URL instead (e.g. postgresql://...)")
    board.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    board.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    board.set_defaults(func=cmd_dashboard)

    compare = commands.add_parser("compare", help="compare run directories: table, loss curves, Markdown and HTML")
    compare.add_argument("runs", nargs="+", metavar="RUN_DIR", help="two or more run directories of `optbench train`")
    compare.add_argument("--out", help="where to write (default ./compare)")
    compare.set_defaults(func=cmd_compare)

    check = commands.add_parser("check-optimizer", help="conformance checks of one optimizer (learns, resumes "
                                                        "bit-identically, lr 0, bf16, synthetic problems, ...)")
    check.add_argument("target", help="a registered optimizer (optbench optim list) or package.module:Class")
    check.add_argument("overrides", nargs="*", default=[], help="optim.key=value, e.g. optim.lr=3e-4")
    check.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    check.add_argument("--only", action="append", metavar="CHECK", help="run only this check (repeatable)")
    check.set_defaults(func=cmd_check_optimizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        from optbench import plugins

        plugins.load_configured(args.plugins)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except UserError as err:
        sys.stderr.write(f"optbench: error: {err}\n")  # one write: ranks of a torchrun job never interleave a line
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
