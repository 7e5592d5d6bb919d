"""`robot-pref run CONFIG.yaml [--set key=value ...]`: the whole pipeline, resumable; `robot-pref study`: a grid."""

from __future__ import annotations

import argparse


def _config_values(args: argparse.Namespace) -> dict:
    """The YAML config with --set overrides and --address applied (shared by run and study)."""
    from robot_pref.config import load_yaml, parse_overrides

    values = load_yaml(args.config)
    values.update(parse_overrides(args.set or []))
    if args.address:
        values["address"] = args.address
    return values


def run(args: argparse.Namespace) -> dict:
    from robot_pref.config import from_dict
    from robot_pref.pipeline.run import RunConfig, run_pipeline

    return run_pipeline(from_dict(RunConfig, _config_values(args)))


def register(sub) -> None:
    parser = sub.add_parser(
        "run",
        help="Run the pipeline: collect, render, label, fit reward, relabel, train, evaluate, report",
        description="Run (or resume) a pipeline config; finished stages are skipped on rerun.",
    )
    parser.add_argument("config", help="YAML run config, e.g. configs/quickstart.yaml")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field, dotted for sections: --set label.pairs=500")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.set_defaults(_run=run)
    register_study(sub)


def study(args: argparse.Namespace) -> dict:
    from robot_pref.config import from_dict
    from robot_pref.pipeline.study import StudyConfig, run_study

    return run_study(from_dict(StudyConfig, _config_values(args)))


def register_study(sub) -> None:
    parser = sub.add_parser(
        "study",
        help="Run a study: a grid of pipeline runs (tasks x labelers x budgets x seeds), then its aggregate report",
        description="Run (or resume) a study config; finished cells are skipped on rerun (configs/study_cpu.yaml).",
    )
    parser.add_argument("config", help="YAML study config, e.g. configs/study_cpu.yaml")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a study field: --set seeds=0,1 --set episodes=20")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    parser.set_defaults(_run=study)
