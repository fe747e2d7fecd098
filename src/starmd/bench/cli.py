"""The command line every benchmark script shares: settings JSON in, one result JSON and one plot out."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from starmd.bench.config import load_settings


def make_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config-json", default="{}", help="JSON of the `benchmarks` config section (or a part)")
    parser.add_argument("--out-json", required=True, type=Path, help="benchmarks/results/<name>.json")
    parser.add_argument("--out-png", required=True, type=Path, help="benchmarks/results/<name>.png")
    return parser


def setup(args: argparse.Namespace, schema_path: Path) -> dict:
    """Validated settings (defaults filled); torch threads set; INFO logging to stderr (Snakemake's log:)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    settings = load_settings(args.config_json, schema_path)
    torch.set_num_threads(settings["threads"])
    return settings


def start_benchmark(parser: argparse.ArgumentParser, argv: list[str] | None, schema_path: Path
          ) -> tuple[argparse.Namespace, dict, float]:
    """Every benchmark's first lines: parsed arguments, validated settings (`setup`) and the start time for the
    result's wall_s."""
    args = parser.parse_args(argv)
    return args, setup(args, schema_path), time.perf_counter()
