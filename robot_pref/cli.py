"""`robot-pref`: one console script, one subcommand per workflow step.

Each room registers its own subcommands in a light `commands` module (argument parsing only; the
heavy imports happen when a command runs), so `robot-pref --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from robot_pref import console

COMMAND_MODULES = (
    "robot_pref.data.commands",  # info, import-robomimic
    "robot_pref.envs.commands",  # collect
    "robot_pref.render.commands",  # render
    "robot_pref.feedback.commands",  # label, label-report
    "robot_pref.reward.commands",  # fit-reward, relabel
    "robot_pref.rl.commands",  # train, compare
    "robot_pref.eval.commands",  # eval
    "robot_pref.hardware.commands",  # teleop, rollout, serve
    "robot_pref.pipeline.commands",  # run
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robot-pref",
        description="Robot offline RL from vision-language-model preference feedback.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and every library's console lines (robosuite, Ray, warnings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.configure(args.verbose)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from robot_pref.data.dataset import DatasetError

    try:
        args._run(args)
    except (DatasetError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"robot-pref {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"robot-pref {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
