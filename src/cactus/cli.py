"""The `cactus` command line. Each subcommand is a function `cmd_<name>(args) -> exit code`.

Errors print as one line on stderr (a traceback only with --debug); exit codes: 0 ok,
1 runtime failure, 2 bad usage or input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERRUPT = 0, 1, 2, 130


def cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    out = convert(args.hf_dir, args.out_dir, quant=args.quant, group_size=args.group_size,
                  embed_quant=args.embed_quant, progress=not args.quiet, overwrite=args.force,
                  chat=not args.no_chat)
    print(f"wrote {out}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace) -> int:
    from .hub import download

    out = download(args.repo, quant=args.quant, out=args.out, revision=args.revision, force=args.force,
                   progress=not args.quiet)
    print(f"model ready: {out}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace) -> int:
    from .hub import list_models, models_dir

    entries = list_models()
    if not entries:
        print(f"no converted models in {models_dir()} (`cactus download REPO` adds one)", file=sys.stderr)
        return EXIT_OK
    width = max(4, *(len(e.name) for e in entries))
    print(f"{'NAME':<{width}}  QUANT  {'SIZE':>9}  PATH")
    for e in entries:
        print(f"{e.name:<{width}}  {e.quant:<5}  {e.size / 1e9:7.2f} GB  {e.path}")
    return EXIT_OK


def cmd_rm(args: argparse.Namespace) -> int:
    from .hub import remove

    e = remove(args.name)
    print(f"removed {e.name} ({e.quant}, {e.size / 1e9:.2f} GB) from {e.path.parent}")
    return EXIT_OK


def resolve_model(name: str | None, quant: str = "int4") -> Path:
    """A model argument -> a converted model directory: none or 'demo' (the built-in demo model),
    a directory, a model name in the cactus home (`cactus list`), or a HuggingFace repo id
    (downloaded and converted into the home on first use, one directory per quant).
    What exists on disk is a path; what looks like a path (starts with . / ~, has more than one
    slash, or its first part is a local directory: weights/lfm2-24b-a2b) and does not exist is a
    missing directory, never taken for a repo id."""
    if name in (None, "demo"):
        from .demo import demo_path

        return demo_path()
    from .hub import converted_quant, download, model_dir, models_dir

    path = Path(name).expanduser()
    if path.exists():
        return path
    parts = name.replace("\\", "/").split("/")
    if name.startswith((".", "/", "~")) or len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).is_dir()):
        raise FileNotFoundError(f"{name}: no such model directory")
    if len(parts) == 1:
        if (models_dir() / name).is_dir():
            return models_dir() / name
        raise FileNotFoundError(f"{name}: no such model directory, and no model of that name in {models_dir()} "
                                f"(give a directory, a name from `cactus list`, a HuggingFace repo id, or 'demo')")
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name):
        raise FileNotFoundError(f"{name}: no such model directory, and not a HuggingFace repo id")
    out = model_dir(name, quant)
    if converted_quant(out) == quant:
        return out
    print(f"{name} ({quant}) is not converted yet: downloading it to {out} ...", file=sys.stderr)
    return download(name, quant=quant)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    keys = ("temperature", "top_p", "top_k", "max_tokens", "seed", "repetition_penalty", "speculative",
            "draft_tokens")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "draft", None) is not None:
        out["speculative"] = args.draft
    return out


def add_speculation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", type=option_type("speculative", str), default=None, metavar="off|prompt|MODEL",
                   help="speculative decoding, the same answers sooner: prompt (default: drafts what follows "
                        "repeats of the context), off, or a draft model directory")
    p.add_argument("--draft", type=option_type("speculative", str), default=None, metavar="MODEL",
                   help="a small converted model with the same tokenizer to draft tokens (= --speculative MODEL)")
    p.add_argument("--draft-tokens", dest="draft_tokens", type=option_type("draft_tokens", int), default=None,
                   metavar="K", help="most tokens drafted per verification (default: 8)")


def cmd_run(args: argparse.Namespace) -> int:
    from .api import Model
    from .repl import repl

    tools = read_tools(args.tools) if args.tools else None  # checked before the model loads
    options = sampling_kwargs(args)
    if args.tool_choice is not None:
        options["tool_choice"] = read_tool_choice(args.tool_choice, tools, args.tools)
    if args.system is not None:
        from .chat import validate_messages

        try:
            validate_messages([{"role": "system", "content": args.system}])
        except ValueError as e:
            raise ValueError(f"--system: {str(e).partition(': ')[2]}") from None
    path = resolve_model(args.model, args.quant)
    # piped input is read as bytes, so a line that is not UTF-8 is reported and skipped, not fatal
    stdin = sys.stdin if sys.stdin.isatty() else getattr(sys.stdin, "buffer", sys.stdin)
    with Model(path, max_context=args.context) as model:
        return repl(model, stdin, sys.stdout, sys.stderr, tools=tools, system=args.system, options=options)


def cmd_serve(args: argparse.Namespace) -> int:
    from .api import Model
    from .server import default_parallel, serve

    if args.cache_mb < 0 or not args.timeout > 0:
        raise ValueError("--cache-mb must be >= 0" if args.cache_mb < 0 else "--timeout must be > 0")
    if args.parallel is not None and not 1 <= args.parallel <= 64:
        raise ValueError("--parallel must be in [1, 64]")
    path = resolve_model(args.model, args.quant)
    name = args.name or (args.model if args.model and not Path(args.model).is_dir() else path.name)

    def ready(server):
        host, port = server.server_address[:2]
        print(f"cactus: serving {name} on http://{host}:{port}/v1 ({len(server.free)} parallel slots; "
              "OpenAI-compatible; Ctrl-C stops)",
              file=sys.stderr, flush=True)

    speculation = sampling_kwargs(args)  # only --speculative / --draft / --draft-tokens here
    with Model(path, max_context=args.context) as model:
        model.defaults.update(speculation)  # each request's default; a request's own options win
        serve(model, name, args.host, args.port, verbose=args.verbose, ready=ready, cors=args.cors,
              timeout_s=args.timeout, cache_mb=args.cache_mb, parallel=args.parallel or default_parallel(model))
    return EXIT_OK


def cmd_build(args: argparse.Namespace) -> int:
    import os
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[2]
    if not (root / "setup.py").is_file():
        raise FileNotFoundError(f"cactus build rebuilds the kernels of a source checkout (no setup.py above "
                                f"{Path(__file__).parent}); reinstall with pip to rebuild this installation")
    print(f"building the native kernels in {root} ...", file=sys.stderr)
    (root / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "build") as tmp:
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-lib", tmp,
                            "--build-temp", str(Path(tmp) / "obj")], cwd=root,
                           stdout=None if args.verbose else subprocess.DEVNULL)
        if r.returncode:
            print("cactus build: error: the compiler failed (run with --verbose to see its output)",
                  file=sys.stderr)
            return EXIT_FAIL
        for built in (Path(tmp) / "cactus").glob("_kernels*"):
            # a rename, not a copy over the old file: a process that has it loaded keeps its mapping
            os.replace(built, Path(__file__).parent / built.name)
    # a fresh interpreter loads the new extension
    code = "from cactus import ops; print(ops.isa(), ' '.join(ops.supported()), ops.threads())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode:
        print(f"cactus build: error: the built kernels do not load: {r.stderr.strip().splitlines()[-1]}",
              file=sys.stderr)
        return EXIT_FAIL
    isa, *supported = r.stdout.split()
    threads = supported.pop()
    print(f"kernels built: this machine runs {isa} (supported here: {', '.join(supported)}; {threads} threads)")
    return EXIT_OK


def option_type(name: str, convert: type) -> Callable[[str], Any]:
    """An argparse type for sampling option `name`: the text as `convert`, then checked by
    sampling.check_option (the one place the ranges live), so a bad flag is a usage error (2)."""
    def parse(text: str):
        from .sampling import OptionError, check_option

        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if convert is int else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            return check_option(name, value)
        except OptionError as e:
            raise argparse.ArgumentTypeError(e.problem) from None
    return parse


def context_type(text: str) -> int:
    from .api import check_context_size

    try:
        return check_context_size(int(text), "")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).strip() if text.lstrip("+-").isdigit() else
                                         f"must be a whole number of tokens, got {text!r}") from None


def port_type(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {text!r}")
    return port


def read_tools(file: str) -> list:
    """--tools FILE.json: OpenAI-style tool schemas, checked now (errors name the file)."""
    from .chat import validate_tools

    try:
        data = Path(file).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"--tools {file}: no such file") from None
    try:
        tools = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"--tools {file}: not valid JSON ({e})") from None
    try:
        return validate_tools(tools)
    except ValueError as e:
        raise ValueError(f"--tools {file}: {e}") from None


def read_tool_choice(value: str, tools: list | None, file: str | None) -> str | dict:
    """--tool-choice auto|none|required|NAME -> the tool_choice option (NAME: one of the --tools),
    checked before the model loads."""
    from . import grammar

    names = [t.get("function", t)["name"] for t in tools or ()]
    if value not in grammar.TOOL_CHOICES and value not in names:
        tool = f"a tool in {file} ({', '.join(names)})" if names else "a tool name (with --tools)"
        raise ValueError(f"--tool-choice: must be auto, none, required or {tool}, got {value!r}")
    if value != "auto" and not grammar.available():
        raise ValueError(f"--tool-choice {value}: needs the llguidance package (pip install llguidance)")
    if value == "required" and not tools:
        raise ValueError("--tool-choice required: a tool call is required but no --tools were given")
    return value if value in grammar.TOOL_CHOICES else {"name": value}


def add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=option_type("temperature", float), default=None,
                   help="0 = greedy (default: the model's)")
    p.add_argument("--top-p", dest="top_p", type=option_type("top_p", float), default=None)
    p.add_argument("--top-k", dest="top_k", type=option_type("top_k", int), default=None)
    p.add_argument("--repetition-penalty", dest="repetition_penalty", type=option_type("repetition_penalty", float),
                   default=None)
    p.add_argument("--max-tokens", dest="max_tokens", type=option_type("max_tokens", int), default=None,
                   help="most tokens per answer")
    p.add_argument("--seed", type=option_type("seed", int), default=None)


def build_parser() -> argparse.ArgumentParser:
    from .quant import FORMATS

    p = argparse.ArgumentParser(prog="cactus", description="Run LFM2 / LFM2-MoE models on a CPU.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a local HuggingFace checkpoint into a cactus model directory",
                       description="Convert a local HuggingFace LFM2/LFM2-MoE checkpoint (config.json + "
                                   "safetensors, single or sharded, bf16/f16/f32) into a cactus weight "
                                   "directory. Written under a temporary name, renamed when complete.")
    c.add_argument("hf_dir", type=Path, help="HuggingFace checkpoint directory")
    c.add_argument("out_dir", type=Path, help="output directory (e.g. ~/.cache/cactus/models/my-model: "
                                              "`cactus run my-model` and `cactus list` then find it)")
    c.add_argument("--quant", default="int4", choices=list(FORMATS),
                   help="weight format of the linear layers (default: int4)")
    c.add_argument("--group-size", type=int, default=32, help="quantization group size (multiple of 32)")
    c.add_argument("--embed-quant", default=None, choices=list(FORMATS),
                   help="format of the tied embedding / LM head (default: int8 for int4, else --quant)")
    c.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds a cactus model")
    c.add_argument("--no-chat", dest="no_chat", action="store_true",
                   help="convert a checkpoint without tokenizer.json or chat template (bench / forward only)")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_convert)

    d = sub.add_parser("download", help="download a HuggingFace checkpoint and convert it",
                       description="Fetch only what a conversion needs (config, safetensors, tokenizer, chat "
                                   "template) with huggingface_hub (resumable; honours HF_TOKEN, HF_HOME, "
                                   "HF_HUB_OFFLINE), then convert it into the cactus home: "
                                   "$CACTUS_HOME/models/<name> (default ~/.cache/cactus/models; "
                                   "$XDG_CACHE_HOME is honoured). <name> is the repo name, lower-cased, for "
                                   "INT4, and gets a -<quant> suffix for any other quant "
                                   "(lfm2-8b-a1b, lfm2-8b-a1b-int8).")
    d.add_argument("repo", help="HuggingFace repo id, e.g. LiquidAI/LFM2-24B-A2B")
    d.add_argument("--quant", default="int4", choices=list(FORMATS),
                   help="weight format (default: int4)")
    d.add_argument("--out", type=Path, default=None,
                   help="output directory (default: <cactus home>/models/<name>, see above)")
    d.add_argument("--revision", default=None, help="branch, tag or commit of the repo")
    d.add_argument("--force", action="store_true", help="convert again even if the output exists")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=cmd_download)

    ls = sub.add_parser("list", help="list the converted models in the cactus home",
                        description="Name, quant, size on disk and path of every model in "
                                    "$CACTUS_HOME/models (default ~/.cache/cactus/models).")
    ls.set_defaults(func=cmd_list)

    rm = sub.add_parser("rm", help="remove a converted model from the cactus home",
                        description="Delete one model directory of `cactus list` (only those; a running "
                                    "process that has it loaded keeps working).")
    rm.add_argument("name", help="a model name as `cactus list` shows it")
    rm.set_defaults(func=cmd_rm)

    def add_model_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", nargs="?", default=None,
                       help="a model directory, a name from `cactus list`, a HuggingFace repo id (downloaded "
                            "and converted on first use), or 'demo' (default: the built-in demo model)")
        p.add_argument("--quant", default="int4", choices=list(FORMATS),
                       help="for a repo id: which conversion (each quant has its own directory; converted "
                            "on first use)")
        p.add_argument("--context", type=context_type, default=None,
                       help="context window in tokens (default: the model's)")

    r = sub.add_parser("run", help="chat with a model in the terminal",
                       description="Interactive chat: answers stream as they are generated, tok/s after each. "
                                   "Commands: /reset, /system TEXT, /tool TEXT, /help, /exit. End a line with "
                                   "\\ to continue it, or wrap several lines in \"\"\"; Ctrl-C stops an answer. "
                                   "Reads piped stdin too (one message per line).")
    add_model_arguments(r)
    r.add_argument("--system", default=None, help="system prompt")
    r.add_argument("--tools", default=None, metavar="FILE.json", help="OpenAI-style tool schemas (a JSON array)")
    r.add_argument("--tool-choice", dest="tool_choice", default=None, metavar="auto|none|required|NAME",
                   help="with --tools: auto (default: the model decides), none (no call), required (each answer "
                        "starts with a call) or NAME (a call to that tool)")
    add_sampling_arguments(r)
    add_speculation_arguments(r)
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="POST /v1/chat/completions, /v1/completions and /v1/responses (streaming, "
                                   "tools, structured output, logprobs), GET /v1/models[/ID], GET /health.")
    add_model_arguments(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=port_type, default=8080)
    v.add_argument("--name", default=None, help="model id reported to clients")
    v.add_argument("--verbose", action="store_true", help="log each request")
    v.add_argument("--cache-mb", dest="cache_mb", type=float, default=512, metavar="MB",
                   help="memory for the caches of conversations set aside, so agents that take turns each "
                        "prefill only their new tokens (default: 512; 0 keeps only the current one)")
    v.add_argument("--cors", action="append", default=None, metavar="ORIGIN",
                   help="allow browser pages from ORIGIN (repeatable; '*' for any) to call the API")
    v.add_argument("--timeout", type=float, default=60, metavar="S",
                   help="drop a client silent this long mid-request or mid-stream (default: 60)")
    v.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="requests served at once, their decode steps batched (default: from the model's "
                        "size and the cores: 2 per core under 4 GiB, else 1 per core, at most 8)")
    add_speculation_arguments(v)
    v.set_defaults(func=cmd_serve)

    b = sub.add_parser("build", help="rebuild the native kernels in place and show which ISA this CPU uses",
                       description="Recompile cactus's C kernels in the source checkout (what `pip install -e .` "
                                   "does), then print the kernel level this machine will use. `--python` is "
                                   "accepted for compatibility with the seed's `cactus build --python`.")
    b.add_argument("--python", action="store_true", help=argparse.SUPPRESS)
    b.add_argument("--verbose", action="store_true", help="show the compiler's output")
    b.set_defaults(func=cmd_build)

    # `cactus bench ...` is handed whole to bench.main (its own parser and --help); listed here for help.
    sub.add_parser("bench", help="measure prefill/decode speed, memory and weight bandwidth "
                                 "(cactus bench --help)", add_help=False)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return bench_main(args.rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv[:1] == ["bench"] or argv[:2] == ["--debug", "bench"]:
        i = argv.index("bench")
        args = argparse.Namespace(command="bench", debug=i == 1, func=cmd_bench, rest=argv[i + 1:])
    else:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse has printed the usage error (2) or the help (0)
            return e.code if isinstance(e.code, int) else EXIT_USAGE
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
        from .hub import DownloadError
        from .weights import WeightError

        usage = isinstance(e, (ConfigError, WeightError, ValueError, FileNotFoundError, FileExistsError))
        if isinstance(e, DownloadError):
            usage = False
        print(f"cactus {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE if usage else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
