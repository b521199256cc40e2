"""The `cactus` command line. Each subcommand is a function `cmd_<name>(args) -> exit code`.

Errors print as one line on stderr (a traceback only with --debug); exit codes: 0 ok,
1 runtime failure, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(args.hf_dir, args.out_dir, quant=args.quant, group_size=args.group_size,
                  embed_quant=args.embed_quant, progress=not args.quiet, overwrite=args.force)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from .hub import download

    out = download(args.repo, quant=args.quant, out=args.out, revision=args.revision, force=args.force,
                   progress=not args.quiet)
    print(f"model ready: {out}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cactus", description="Run LFM2 / LFM2-MoE models on a CPU.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a local HuggingFace checkpoint into a cactus model directory",
                       description="Convert a local HuggingFace LFM2/LFM2-MoE checkpoint (config.json + "
                                   "safetensors, single or sharded, bf16/f16/f32) into a cactus weight "
                                   "directory. Written under a temporary name, renamed when complete.")
    c.add_argument("hf_dir", type=Path, help="HuggingFace checkpoint directory")
    c.add_argument("out_dir", type=Path, help="output directory (e.g. weights/lfm2-1.2b)")
    c.add_argument("--quant", default="int4", choices=["f32", "f16", "bf16", "int8", "int4"],
                   help="weight format of the linear layers (default: int4)")
    c.add_argument("--group-size", type=int, default=32, help="quantization group size (multiple of 32)")
    c.add_argument("--embed-quant", default=None, choices=["f32", "f16", "bf16", "int8", "int4"],
                   help="format of the tied embedding / LM head (default: int8 for int4, else --quant)")
    c.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("download", help="download a HuggingFace checkpoint and convert it",
                       description="Fetch only what a conversion needs (config, safetensors, tokenizer, chat "
                                   "template) with huggingface_hub (resumable; honours HF_TOKEN, HF_HOME, "
                                   "HF_HUB_OFFLINE), then convert it into weights/<name>.")
    d.add_argument("repo", help="HuggingFace repo id, e.g. LiquidAI/LFM2-24B-A2B")
    d.add_argument("--quant", default="int4", choices=["f32", "f16", "bf16", "int8", "int4"],
                   help="weight format (default: int4)")
    d.add_argument("--out", type=Path, default=None, help="output directory (default: weights/<repo name>)")
    d.add_argument("--revision", default=None, help="branch, tag or commit of the repo")
    d.add_argument("--force", action="store_true", help="convert again even if the output exists")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    except Exception as e:  # one clear line, not a traceback
        if args.debug:
            raise
        from .config import ConfigError
        from .weights import WeightError

        from .hub import DownloadError

        usage = isinstance(e, (ConfigError, WeightError, ValueError, FileNotFoundError, FileExistsError))
        if isinstance(e, DownloadError):
            usage = False
        print(f"cactus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
