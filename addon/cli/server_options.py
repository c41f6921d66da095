"""The model and server options the photo and batch command lines share, and the server
process they describe."""
from __future__ import annotations

import argparse
import sys

from ..protocol.client import ServerProcess

DEFAULT_REPO = "facebook/sam-3d-body-dinov3"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="DIR",
                        help="checkpoint folder (model.ckpt, model_config.yaml, assets/)")
    source.add_argument("--repo", metavar="HF_ID",
                        help=f"Hugging Face repository id (default {DEFAULT_REPO})")
    parser.add_argument("--mhr", metavar="PATH", help="mhr_model.pt (default: the checkpoint's)")


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Where and how the inference server runs (photo and batch command lines)."""
    parser.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    parser.add_argument("--precision", choices=("auto", "official", "fp32", "fast"),
                        default="auto", help="model precision on the server (default: the "
                        "server's own)")
    parser.add_argument("--python", metavar="PATH", default=sys.executable,
                        help="Python that runs the server (default: this one)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="S",
                        help="seconds to wait for the server to load (default 600)")
    # Extra `python -m server serve` arguments (development: alternative engines).
    parser.add_argument("--server-arg", action="append", default=[], help=argparse.SUPPRESS)


def server_process(args: argparse.Namespace) -> ServerProcess:
    """The server the parsed model and server options describe (not started yet)."""
    return ServerProcess(
        args.python, checkpoint=args.checkpoint,
        repo=None if args.checkpoint else (args.repo or DEFAULT_REPO),
        mhr=args.mhr, device=args.device, ready_timeout=args.timeout,
        extra_args=[*precision_args(args.precision), *args.server_arg])


def precision_args(precision: str) -> list[str]:
    """`--precision` only when chosen, so a server without the flag still starts."""
    return [] if precision == "auto" else ["--precision", precision]
