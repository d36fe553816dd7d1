"""The ``nemovlm`` command: ``demo``, ``emulator``, ``models``, ``ask`` and ``batch``.

Every command runs on the framework-neutral core (``nemovlm.batch.connect`` picks the
NIM or fal backend), so a plain ``pip install nemovlm`` has a working CLI. Errors print
as one line with what to do; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nemovlm.messages import MediaKind, MediaPart, Reply
    from nemovlm.profiles import ModelProfile

# Colour only on a terminal, and never with NO_COLOR set (no-color.org).
_COLOUR = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
DIM, BOLD, RESET = ("\033[2m", "\033[1m", "\033[0m") if _COLOUR else ("", "", "")
EMULATOR_FAL_KEY = "emulator-key"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        result: int = args.run(args)
        return result
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line unless --debug
        if args.debug:
            raise
        print(f"nemovlm: error: {_one_line(exc)} (run with --debug for the traceback)",
              file=sys.stderr)  # fmt: skip
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nemovlm", description="NVIDIA vision-language models for LangChain and LlamaIndex."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="a tour of every model against the local emulator")
    demo.set_defaults(run=_run_demo)

    emu = sub.add_parser("emulator", help="serve the local NIM + fal emulator")
    emu.add_argument("--port", type=int, default=8000, help="NIM port (default 8000)")
    emu.add_argument("--fal-port", type=int, default=8443, help="fal port, TLS (default 8443)")
    emu.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    emu.add_argument(
        "--hosted", action="store_true", help="play NVIDIA's hosted catalog (NVCF assets, limits)"
    )
    emu.set_defaults(run=_run_emulator)

    models = sub.add_parser("models", help="the known models and what they take")
    models.set_defaults(run=_run_models)

    ask = sub.add_parser("ask", help="ask a model a question, streaming the answer")
    ask.add_argument("model", help="model id, e.g. nvidia/nemotron-nano-12b-v2-vl")
    ask.add_argument("question")
    ask.add_argument("--image", action="append", default=[], help="path or URL (repeatable)")
    ask.add_argument("--video", help="path or URL of an MP4")
    ask.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=None)
    ask.add_argument("--show-reasoning", action="store_true", help="print the reasoning, dimmed")
    ask.add_argument("--base-url", help="NIM base URL (default NVIDIA_BASE_URL or the catalog)")
    _add_hosted_arguments(ask)
    ask.add_argument("--max-tokens", type=int)
    ask.set_defaults(run=_run_ask)
    _add_batch_parser(sub)
    return parser


# --- models ----------------------------------------------------------------------------


def _run_models(args: argparse.Namespace) -> int:
    print(models_table())
    return 0


def models_table() -> str:
    """The capability table of the known models (also in the README)."""
    from nemovlm.profiles import PROFILES

    rows = [("model", "served by", "images", "video", "reasoning switch", "tools", "structured")]
    for p in PROFILES.values():
        images = "/".join(sorted(p.image_formats)) if p.image_formats else (
            "any (URL)" if p.image_formats is None else "-"
        )  # fmt: skip
        if p.max_images:
            images += f" (exactly {p.max_images})"
        video = "/".join(sorted(p.video_formats)) if p.video_formats else "-"
        if p.video_sampling:
            video += " fps|frames<=128"
        if p.max_video_seconds:
            video += f" <={int(p.max_video_seconds)}s <={p.max_video_height}p"
        switch = {
            "system_think": "/think in system prompt",
            "chat_template_thinking": "chat_template_kwargs.thinking",
            "fal_reasoning_mode": "reasoning_mode",
            None: "-",
        }[p.reasoning]
        tools = "native" if p.tools == "native" else "prompted"
        structured = "json_schema" if p.json_schema else "prompted"
        rows.append((p.model, p.backend.upper(), images, video, switch, tools, structured))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --- emulator --------------------------------------------------------------------------


def _run_emulator(args: argparse.Namespace) -> int:
    from nemovlm.emulator import start_nim_emulator
    from nemovlm.emulator.fal import start_fal_emulator

    nim = start_nim_emulator(port=args.port, host=args.host, hosted=args.hosted)
    fal = start_fal_emulator(port=args.fal_port, host=args.host)
    print("nemovlm emulator running (answers are emulated, not from a real model).")
    print("Point clients at it with:\n")
    print(f"  export NVIDIA_BASE_URL={nim.url}/v1")
    if args.hosted:
        from nemovlm.emulator.hosted import hosted_banner

        print(hosted_banner(nim.url))
    for name, value in fal.env.items():
        print(f"  export {name}={value}")
    print(f"  export FAL_KEY={EMULATOR_FAL_KEY}")
    print(
        "\nfal uploads (media over 1 MB): `nemovlm ask` and the cookbooks follow these exports "
        "by themselves; in your own Python process call\n"
        f"  from nemovlm.emulator.fal import aim_fal_client; "
        f"aim_fal_client({fal.url!r}, {str(fal.ca_bundle)!r})\n"
    )
    # SIGTERM (kill, docker stop, a supervisor) ends it as Ctrl-C does, so the exit
    # handlers run and remove the TLS key material.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        print("Ctrl-C stops it.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fal.stop()
        nim.stop()
    return 0


@contextmanager
def running_emulators() -> Iterator[tuple[str, Any]]:
    """Both emulators in-process, this process's fal-client aimed at the fal one.
    Yields the NIM base URL and the fal emulator."""
    from nemovlm.emulator import start_nim_emulator
    from nemovlm.emulator.fal import start_fal_emulator

    with ExitStack() as stack:
        nim = start_nim_emulator()
        stack.callback(nim.stop)
        fal = start_fal_emulator()
        stack.callback(fal.stop)
        stack.callback(fal.aim_fal_client())
        saved = os.environ.get("FAL_KEY")
        os.environ["FAL_KEY"] = saved or EMULATOR_FAL_KEY
        stack.callback(_restore_env, "FAL_KEY", saved)
        yield nim.url + "/v1", fal


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


# --- demo ------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    """Every model against the local emulator, on the core alone (no framework)."""
    from nemovlm.batch import connect
    from nemovlm.messages import MediaPart, TextPart, ToolSpec, Turn
    from nemovlm.options import RequestOptions
    from nemovlm.pipeline import assemble_reply
    from nemovlm.samples import make_chart, make_mp4

    _require_extras("demo", ("starlette", "emulator"), ("fal_client", "fal"))
    chart = make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], title="Revenue")
    clip = make_mp4(duration_s=6.0, width=640, height=360, fps=8.0)
    image = MediaPart("image", data=chart, mime_type="image/png")
    video = MediaPart("video", data=clip, mime_type="video/mp4")
    weather = ToolSpec(
        "get_weather",
        "Current weather for a city.",
        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    )
    tools = RequestOptions(tools=(weather,))

    def ask(text: str, *media: MediaPart) -> list[Turn]:
        return [Turn("user", [TextPart(text), *media])]

    print(f"{BOLD}nemovlm demo{RESET}: every answer below comes from the local EMULATOR "
          "(it reports what it received; it is not a model).\n")  # fmt: skip
    with running_emulators() as (nim_url, _fal):
        llama = connect("nvidia/llama-3.1-nemotron-nano-vl-8b-v1", base_url=nim_url)
        nano = connect("nvidia/nemotron-nano-12b-v2-vl", base_url=nim_url)
        gemma = connect("google/diffusiongemma-26b-a4b-it", base_url=nim_url)
        diffusion = connect("fal-ai/nemotron-diffusion-vlm")
        omni = connect("nvidia/nemotron-3-nano-omni/video")
        steps: list[tuple[str, Callable[[], Reply]]] = [
            ("Llama Nano VL 8B, image (sent before the text)",
             lambda: llama.complete(ask("What does this chart show?", image), RequestOptions())),
            ("Nano 12B v2 VL, reasoning on (/think), streamed",
             lambda: assemble_reply(nano.stream(ask("Which quarter was best?", image),
                                                RequestOptions(reasoning=True)))),
            ("Nano 12B v2 VL, video at 2 fps",
             lambda: nano.complete(ask("What happens in this clip?", video),
                                   RequestOptions(video_fps=2.0))),
            ("DiffusionGemma, reasoning on by default (its `reasoning` field)",
             lambda: gemma.complete(ask("Describe the chart.", image), RequestOptions())),
            ("Nano 12B v2 VL, native tool call",
             lambda: nano.complete(ask("Weather in Paris?"), tools)),
            ("Llama Nano VL 8B, tool call through the prompt protocol",
             lambda: llama.complete(ask("Weather in Oslo?"), tools)),
            ("fal Nemotron Diffusion VLM, one image + prompt",
             lambda: diffusion.complete(ask("Describe the chart in one sentence.", image),
                                        RequestOptions(max_tokens=256))),
            ("fal Nemotron 3 Nano Omni, video with reasoning",
             lambda: omni.complete(ask("Summarise the clip.", video),
                                   RequestOptions(reasoning=True))),
        ]  # fmt: skip
        for title, step in steps:
            print(f"{BOLD}== {title}{RESET}")
            _show(step(), title)
    print(f"{BOLD}Done.{RESET} Set NVIDIA_API_KEY / FAL_KEY and real endpoints for real answers.")
    return 0


def _require_extras(command: str, *needs: tuple[str, str]) -> None:
    """Say which extra to install when a command needs one that is missing."""
    import importlib.util

    missing = sorted({extra for module, extra in needs if importlib.util.find_spec(module) is None})
    if missing:
        raise ImportError(
            f"`nemovlm {command}` needs the {' and '.join(missing)} extra: "
            f"pip install 'nemovlm[{','.join(missing)}]'"
        )


def _show(reply: Reply, title: str) -> None:
    if reply.reasoning:
        print(f"{DIM}reasoning: {_clip(reply.reasoning)}{RESET}")
    for call in reply.tool_calls:
        print(f"tool call: {call.name}({call.arguments})")
    if reply.text:
        print(_clip(reply.text, 400))
    usage = reply.usage
    cost = reply.metadata.get("estimated_cost_usd")
    extra = f", est. ${cost:.6f}" if isinstance(cost, (int, float)) else ""
    tokens = f"{usage.input_tokens} in / {usage.output_tokens} out" if usage else "? in / ? out"
    print(f"{DIM}[{reply.model}: {tokens} tokens{extra}]{RESET}\n")


def _clip(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- ask -------------------------------------------------------------------------------


def _run_ask(args: argparse.Namespace) -> int:
    """One question, streamed, on the core's backends (no framework needed)."""
    from nemovlm.batch import connect
    from nemovlm.batch.calls import estimated_cost
    from nemovlm.messages import Part, TextPart, Turn
    from nemovlm.options import RequestOptions
    from nemovlm.pipeline import assemble_reply

    if _model_backend(args.model) == "fal":
        _aim_at_local_fal_emulator()
    backend = connect(args.model, base_url=args.base_url, **_hosted_settings(args))
    parts: list[Part] = [TextPart(args.question)]
    parts += [_media_part("image", image, backend.profile) for image in args.image]
    if args.video:
        parts.append(_media_part("video", args.video, backend.profile))
    options = RequestOptions(reasoning=args.reasoning, max_tokens=args.max_tokens)
    deltas = []
    in_reasoning = False
    for delta in backend.stream([Turn("user", parts)], options):
        deltas.append(delta)
        if delta.reasoning and args.show_reasoning:
            if not in_reasoning:
                print(f"{DIM}", end="")
                in_reasoning = True
            print(delta.reasoning, end="", flush=True)
        if delta.text:
            if in_reasoning:
                print(f"{RESET}\n", end="")
                in_reasoning = False
            print(delta.text, end="", flush=True)
    if in_reasoning:
        print(RESET, end="")
    print()
    reply = assemble_reply(deltas)
    for call in reply.tool_calls:
        print(f"tool call: {call.name}({call.arguments})")
    usage = reply.usage
    cost = estimated_cost(reply, backend.profile)
    extra = f", est. ${cost:.6f}" if cost is not None else ""
    tokens = f"{usage.input_tokens} in / {usage.output_tokens} out" if usage else "? in / ? out"
    print(f"{DIM}[{tokens} tokens{extra}]{RESET}")
    return 0


def _model_backend(model: str) -> str:
    from nemovlm.profiles import get_profile

    return get_profile(model).backend


def _aim_at_local_fal_emulator() -> None:
    """After ``nemovlm emulator``'s exports, also send fal uploads there: fal-client's
    upload host has no setting a shell could export."""
    host = os.environ.get("FAL_QUEUE_RUN_HOST", "")
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle and host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]"):
        from nemovlm.emulator.fal import aim_fal_client

        aim_fal_client(f"https://{host}", bundle)


def _media_part(kind: MediaKind, value: str, profile: ModelProfile) -> MediaPart:
    """A path or URL given on the command line (the user's own choice, so no allow-list):
    read with the core's one file reader, the format found from the content."""
    from nemovlm.batch import media_part

    return media_part(value, profile, kind)


# --- batch -----------------------------------------------------------------------------

BATCH_ROWS_FAILED = 3
"""``nemovlm batch``'s exit code when the job ran but some rows failed."""


def _add_hosted_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosted",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="follow NVIDIA's hosted catalog's rules: large media go up as NVCF assets "
        "(default: when the base URL is the catalog's)",
    )
    parser.add_argument(
        "--hosted-media",
        choices=["auto", "upload", "fit"],
        help="on the catalog: auto (inline while it fits, else upload; default), upload "
        "(always), fit (never upload; shrink images)",
    )
    parser.add_argument(
        "--assets-url", help="the NVCF assets endpoint (default NVCF_ASSETS_URL or NVIDIA's)"
    )


def _hosted_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"hosted": args.hosted, "hosted_media": args.hosted_media, "assets_url": args.assets_url}


def _add_batch_parser(sub: Any) -> None:
    batch = sub.add_parser(
        "batch",
        help="ask one question about many images or videos; resumable, one JSONL row each",
        description=(
            "Ask MODEL the PROMPT about every INPUT and write one JSON line per input to "
            "--out, as each completes. INPUT: image or video files, folders (walked; media "
            "found by content), http(s) URLs, or .jsonl/.csv manifests whose rows have an "
            "'input' (or 'image'/'video') and optionally their own 'prompt' and 'id'. "
            "Running the same command again resumes: inputs already answered are skipped "
            "and failed rows are tried again."
        ),
        epilog=(
            "exit codes: 0 every row answered; "
            f"{BATCH_ROWS_FAILED} the job ran but some rows failed (each has an 'error' in "
            "--out); 1 the job could not run (the message says why); 130 stopped by Ctrl-C "
            "(rows written so far are kept: run again to resume)."
        ),
    )
    batch.add_argument("model", help="model id, e.g. nvidia/nemotron-nano-12b-v2-vl")
    batch.add_argument("prompt", help="the question for every row without its own prompt")
    batch.add_argument("inputs", nargs="+", metavar="INPUT")
    batch.add_argument("--out", required=True, help="the JSONL file to write (and resume)")
    batch.add_argument("--concurrency", type=int, default=8, help="calls in flight (default 8)")
    batch.add_argument(
        "--max-retries", type=int, help="NIM client retries per call (default 2; not for fal)"
    )
    batch.add_argument("--base-url", help="NIM base URL (default NVIDIA_BASE_URL or the catalog)")
    _add_hosted_arguments(batch)
    batch.add_argument(
        "--json-schema", metavar="FILE", help="structured output: a JSON Schema file"
    )
    batch.add_argument("--reasoning", action=argparse.BooleanOptionalAction, default=None)
    batch.add_argument("--max-tokens", type=int)
    batch.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    batch.add_argument(
        "--dry-run", action="store_true", help="read and check every input; send nothing"
    )
    batch.add_argument(
        "--progress-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="when not on a terminal, a progress line this often (default 30; 0: every row)",
    )
    batch.set_defaults(run=_run_batch)


def _run_batch(args: argparse.Namespace) -> int:
    import warnings

    from nemovlm.batch import BatchInputWarning, run

    if _model_backend(args.model) == "fal":
        _aim_at_local_fal_emulator()
    with warnings.catch_warnings(), _resume_note_on_interrupt(args.out):
        warnings.simplefilter("always", BatchInputWarning)
        warnings.showwarning = _warn_in_one_line
        summary = run(
            args.model,
            args.prompt,
            args.inputs,
            args.out,
            concurrency=args.concurrency,
            max_retries=args.max_retries,
            base_url=args.base_url,
            **_hosted_settings(args),
            json_schema=args.json_schema,
            reasoning=args.reasoning,
            max_tokens=args.max_tokens,
            overwrite=args.overwrite,
            dry_run=args.dry_run,
            progress_interval=args.progress_interval,
        )
    print(summary, flush=True)
    return 0 if summary.ok else BATCH_ROWS_FAILED


@contextmanager
def _resume_note_on_interrupt(out: str) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        print(f"\nnemovlm batch: stopped. The rows written so far are in {out}; run the same "
              "command again to resume.", file=sys.stderr, flush=True)  # fmt: skip
        raise


def _warn_in_one_line(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
    print(f"nemovlm: warning: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
