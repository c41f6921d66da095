# SPDX-License-Identifier: GPL-3.0-or-later
"""Command line: ``python -m server serve`` (the add-on's inference process) and
``python -m server reconstruct IMAGE --out RESULT.npz`` (one image, locally or via a server).

Exit codes: 0 ok, 2 bad arguments, 1 runtime failure (one line on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from addon.protocol import cli_args

DEFAULT_ENGINE = "server.engine:load_engine"
log = logging.getLogger("server")


class UsageError(Exception):
    """A bad argument found after parsing (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# Argument types








def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--connect must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="DIR",
                        help="official checkpoint folder (model.ckpt, model_config.yaml, assets/)")
    source.add_argument("--repo", metavar="HF_ID",
                        help="Hugging Face repo id, e.g. facebook/sam-3d-body-dinov3")
    parser.add_argument("--mhr", metavar="PATH", help="mhr_model.pt (default: from the checkpoint)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu", "mps"),
                        help="compute device (default: auto)")
    parser.add_argument("--precision", default="auto", choices=("auto", "official", "fp32", "fast"),
                        help="auto = fast on CUDA (fp16/bf16 where safe, MHR fp32), fp32 elsewhere; "
                             "official = Meta's fp16 semantics (docs/PRECISION.md)")
    parser.add_argument("--mhr-backend", default="auto", choices=("auto", "torchscript", "native"),
                        help="torchscript = Meta's mhr_model.pt as shipped (the official numbers); "
                             "native = our forward from its buffers (fewer GPU kernels, vertices "
                             "within 1e-6 m); auto = native with fast precision on CUDA, else "
                             "torchscript")
    parser.add_argument("--detector", default="auto", metavar="auto|none|HF_ID|DIR",
                        help="person detector for photos without --box (default: RT-DETR from the "
                             "Hugging Face hub, loaded on first use; none: the whole photo is one person)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE, metavar="MODULE:FACTORY",
                        help=argparse.SUPPRESS)  # alternative engines (test doubles)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server",
                                     description="SAM 3D Body inference server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the model over a local socket")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; others need --allow-remote)")
    serve.add_argument("--port", type=int, default=0, help="TCP port (0: pick a free one)")
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow binding a non-loopback address (protected by the token; "
                            "add --tls-cert/--tls-key to encrypt the traffic)")
    serve.add_argument("--tls-cert", metavar="CERT.pem",
                       help="serve TLS with this certificate (PEM; needs --tls-key)")
    serve.add_argument("--tls-key", metavar="KEY.pem", help="private key of --tls-cert (PEM)")
    serve.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS",
                       help="drop a client that has not said hello after this long (default 10)")
    serve.add_argument("--io-timeout", type=float, default=30.0, metavar="SECONDS",
                       help="drop a client whose frame or reply stalls this long (default 30)")
    serve.add_argument("--idle-timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="drop a client idle this long with no job (default 3600; 0: never)")
    serve.add_argument("--parent-watch", action="store_true",
                       help="exit when the parent process goes away or closes our stdin")
    serve.add_argument("--queue-size", type=int, default=8, help="queued requests (default 8)")
    serve.add_argument("--max-upload-gb", type=float, default=16.0, metavar="GB",
                       help="largest clip a client may upload, in GiB (default 16); the files go to "
                            "the temporary folder (TMPDIR) while the clip runs")
    _add_model_args(serve)

    rec = commands.add_parser("reconstruct", help="reconstruct the people in one image")
    rec.add_argument("image", metavar="IMAGE",
                     help="image file (JPEG, PNG, ...), or a clip: a movie file or an image folder")
    rec.add_argument("--out", required=True, metavar="RESULT.npz", help="output .npz file")
    rec.add_argument("--mode", default="full", choices=("body", "full"))
    rec.add_argument("--box", type=cli_args.box, action="append", default=[], metavar="x1,y1,x2,y2",
                     help="person box in pixels (repeat for several people)")
    rec.add_argument("--mask", action="append", default=[], metavar="MASK.png",
                     help="person mask, one per --box in the same order")
    rec.add_argument("--intrinsics", type=cli_args.intrinsics,
                     metavar="fx,fy,cx,cy", help="camera intrinsics in pixels")
    rec.add_argument("--prompt", type=cli_args.prompt, action="append", default=[], metavar="x,y,label",
                     help=cli_args.PROMPT_HELP)
    rec.add_argument("--fit-prompts", action="store_true",
                     help="after the prompted run, fit the pose so each prompted keypoint lands on "
                     "its point, holding the other body keypoints (not part of the official pipeline)")
    rec.add_argument("--connect", type=_address, metavar="HOST:PORT",
                     help="send the job to a running server (token from SAM3D_BODY_TOKEN); a clip is "
                          "uploaded to it")
    rec.add_argument("--tls-ca", metavar="CA.pem",
                     help="with --connect: use TLS, verify the server against this CA file")
    rec.add_argument("--tls-pin", metavar="SHA256",
                     help="with --connect: use TLS, accept only the certificate with this "
                          "SHA-256 fingerprint")
    from .video.cli import add_clip_args
    add_clip_args(rec)
    _add_model_args(rec)
    from .bench import add_bench_parser  # `bench` owns its arguments (server/bench.py)
    add_bench_parser(commands)
    return parser


# ---------------------------------------------------------------------------------------------
# Engine loading


def resolve_engine(spec: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(factory, ReconstructRequest type) from ``MODULE:FACTORY``; the module that provides the
    factory also provides the request type its engines accept."""
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        raise UsageError(f"--engine must be MODULE:FACTORY, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, factory_name), getattr(module, "ReconstructRequest")
    except (ImportError, AttributeError) as exc:  # a broken install, not a bad argument
        raise RuntimeError(f"cannot load the engine {spec!r}: {exc}") from exc


def make_engine(factory: Callable[..., Any], args: argparse.Namespace) -> Any:
    kwargs: dict[str, Any] = {}
    if getattr(args, "precision", "auto") != "auto":  # test-double engines take no precision
        kwargs["precision"] = args.precision
    if getattr(args, "detector", "auto") != "auto":
        kwargs["detector"] = args.detector
    if getattr(args, "mhr_backend", "auto") != "auto":
        kwargs["mhr_backend"] = args.mhr_backend
    return factory(checkpoint=args.checkpoint, repo=args.repo, mhr=args.mhr, device=args.device, **kwargs)


# ---------------------------------------------------------------------------------------------
# serve


def cmd_serve(args: argparse.Namespace) -> int:
    from server import service

    remote = not service.is_loopback(args.host)
    if remote and not args.allow_remote:
        raise UsageError(f"refusing to listen on {args.host!r}: other machines could reach the "
                         "server; pass --allow-remote if you really want that")
    if not 0 <= args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    if args.queue_size < 1:
        raise UsageError("--queue-size must be at least 1")
    if not args.max_upload_gb > 0:
        raise UsageError("--max-upload-gb must be positive")
    if not (args.io_timeout > 0 and args.handshake_timeout > 0 and args.idle_timeout >= 0):
        raise UsageError("--io-timeout and --handshake-timeout must be positive and "
                         "--idle-timeout not negative")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    token = os.environ.get(service.TOKEN_ENV, "")
    if not token:
        raise UsageError(f"set {service.TOKEN_ENV} to a secret token; clients must send it")
    if remote and len(token) < 16:
        raise UsageError(f"a server other machines can reach needs a token of at least 16 "
                         f"characters in {service.TOKEN_ENV}")
    ssl_context = None
    if args.tls_cert:
        from addon.protocol.tls import TlsError, server_context

        try:
            ssl_context = server_context(args.tls_cert, args.tls_key)
        except TlsError as exc:
            raise UsageError(str(exc)) from exc
    elif remote:
        log.warning("listening on %s without TLS: the token and images cross the network in "
                    "clear text (use --tls-cert/--tls-key)", args.host)

    ready_stream = service.redirect_stdout_to_stderr()
    from server import stages

    stages.set_sink(ready_stream)  # loading stages before the ready line (server/stages.py)
    holder: dict[str, Any] = {}

    def stop() -> None:
        running = holder.get("service")
        if running is None:
            os._exit(0)  # nothing to clean up while the model is still loading
        running.shutdown()

    if args.parent_watch:
        service.watch_parent(stop)
    signal.signal(signal.SIGTERM, lambda *_: stop())

    factory, request_type = resolve_engine(args.engine)
    engine = make_engine(factory, args)
    running = service.InferenceService(
        engine, request_type, token, host=args.host, port=args.port,
        queue_size=args.queue_size, io_timeout=args.io_timeout,
        handshake_timeout=args.handshake_timeout,
        idle_timeout=args.idle_timeout or None, ssl_context=ssl_context,
        max_upload_bytes=int(args.max_upload_gb * 2**30))
    holder["service"] = running
    running.start()
    stages.set_sink(None)
    info = getattr(engine, "info", {}) or {}
    service.announce_ready(ready_stream, {
        "port": running.port, "host": args.host, "protocol": running.info()["protocol"],
        "device": info.get("device"), "model": info.get("model"), "pid": os.getpid(),
        "tls": ssl_context is not None,
    })
    while not running.wait(1.0):
        pass
    # The job in flight was cancelled by the shutdown; give the engine a moment to notice, then
    # leave even if it does not (a parent that quit must not leave a server behind).
    if not running.join_worker(3.0):
        log.warning("the model worker did not stop within 3 s; exiting anyway")
    logging.shutdown()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# reconstruct


def _read_masks(paths: Sequence[str]) -> list[np.ndarray]:
    from PIL import Image

    from addon.protocol.masks import MaskError, gray_levels, mask_values

    masks = []
    for path in paths:
        try:
            with Image.open(path) as image:
                if image.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
                    gray = np.asarray(image)
                elif image.mode == "LA":
                    gray = np.asarray(image)[..., 0]
                elif image.mode == "1":
                    gray = np.asarray(image.convert("L"))
                else:
                    gray = gray_levels(np.asarray(image.convert("RGB")))
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read mask {path!r}: {exc}") from exc
        # The grey values as read (0/1 stays 0/1, 0/255 stays 0/255), as Meta's code gets them.
        try:
            masks.append(mask_values(gray, repr(path)))
        except MaskError as exc:
            raise UsageError(str(exc)) from exc
    return masks


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from .video.cli import cmd_reconstruct_clip, is_clip_input

    if (args.tls_ca or args.tls_pin) and not args.connect:
        raise UsageError("--tls-ca/--tls-pin need --connect")
    if is_clip_input(args.image):
        if args.connect:
            return cmd_reconstruct_clip(args, lambda: _remote_client(args), save_result, UsageError, remote=True)
        factory, _ = resolve_engine(args.engine)
        return cmd_reconstruct_clip(args, lambda: make_engine(factory, args), save_result, UsageError)
    image_path = Path(args.image)
    if not image_path.is_file():
        raise UsageError(f"image {args.image!r} does not exist")
    if args.fit_prompts and not args.prompt:
        raise UsageError("--fit-prompts needs at least one --prompt x,y,label")
    if args.mask and len(args.mask) != len(args.box):
        raise UsageError(f"give one --mask per --box ({len(args.mask)} masks, "
                         f"{len(args.box)} boxes)")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"the folder of --out {args.out!r} does not exist")
    masks = _read_masks(args.mask) if args.mask else None
    boxes = np.asarray(args.box, dtype=np.float32).reshape(-1, 4) if args.box else None

    if args.connect:
        result, rig = _reconstruct_remote(args, image_path, boxes, masks)
    else:
        from server import service

        factory, request_type = resolve_engine(args.engine)
        fields: dict[str, Any] = {"mode": args.mode, "image_path": str(image_path)}
        if args.intrinsics:
            fields["intrinsics"] = list(args.intrinsics)
        if args.prompt:
            fields["prompts"] = [list(p) for p in args.prompt]
        if args.fit_prompts:
            fields["fit_prompts"] = True
        arrays: dict[str, np.ndarray] = {}
        if boxes is not None:
            arrays["boxes"] = boxes
        if masks is not None:
            arrays["masks"] = np.stack(masks)
        # Decode and check the inputs before the (slow) model load.
        request = service.build_request(request_type, fields, arrays)
        engine = make_engine(factory, args)
        result = engine.reconstruct(request)
        rig = engine.rig_data()
    # The rig travels inside the file (rig_* arrays) so Blender can import it with numpy only.
    from addon.protocol.result_file import with_rig_arrays

    save_result(out, with_rig_arrays(result, rig))
    log.info("wrote %s", out)
    return 0


def _reconstruct_remote(args: argparse.Namespace, image_path: Path, boxes: np.ndarray | None,
                        masks: list[np.ndarray] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with _remote_client(args) as client:
        result = client.reconstruct(
            image_bytes=image_path.read_bytes(), boxes=boxes, masks=masks, mode=args.mode,
            intrinsics=args.intrinsics, prompts=args.prompt or None, fit_prompts=args.fit_prompts,
            progress=lambda f, m: log.info("%3.0f%% %s", 100 * f, m))
        return result, client.rig()


def _remote_client(args: argparse.Namespace) -> Any:
    """A Client (not yet connected) for --connect, its token from the environment."""
    from addon.protocol.client import TOKEN_ENV, Client

    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise UsageError(f"--connect needs the server's token in {TOKEN_ENV}")
    host, port = args.connect
    tls = None
    if args.tls_ca or args.tls_pin:
        from addon.protocol.tls import TlsError, TlsSettings

        try:
            tls = TlsSettings(ca_file=args.tls_ca, pin_sha256=args.tls_pin)
        except TlsError as exc:
            raise UsageError(str(exc)) from exc
    return Client(host, port, token, tls=tls)


def save_result(path: Path, result: dict[str, Any]) -> None:
    """The Result mapping as a pickle-free .npz (strings as numpy unicode arrays)."""
    arrays = {}
    for name, value in result.items():
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"result entry {name!r} is not a numeric or string array")
        arrays[name] = array
    with open(path, "wb") as handle:  # a file object keeps np.savez from appending ".npz"
        np.savez(handle, **arrays)


# ---------------------------------------------------------------------------------------------


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main
    return bench_main(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"serve": cmd_serve, "reconstruct": cmd_reconstruct, "bench": _cmd_bench}
    try:
        return commands[args.command](args)
    except UsageError as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        code = getattr(exc, "code", None)
        text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        label = f"[{code}] " if isinstance(code, str) else f"{type(exc).__name__}: "
        log.debug("failure", exc_info=True)
        print(f"error: {label}{text}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
