"""The ``nemovlm`` command: ``demo``, ``emulator``, ``models`` and ``ask``.

Errors print as one line with what to do; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

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
    ask.add_argument("--max-tokens", type=int)
    ask.set_defaults(run=_run_ask)
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
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
    from nemovlm.samples import make_chart, make_mp4

    chart = make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], title="Revenue")
    chart_url = "data:image/png;base64," + base64.b64encode(chart).decode()
    clip = make_mp4(duration_s=6.0, width=640, height=360, fps=8.0)
    clip_url = "data:video/mp4;base64," + base64.b64encode(clip).decode()

    def ask(text: str, *media: dict[str, Any]) -> list[HumanMessage]:
        return [HumanMessage(content=[{"type": "text", "text": text}, *media])]

    image = {"type": "image_url", "image_url": {"url": chart_url}}
    video = {"type": "video_url", "video_url": {"url": clip_url}}

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return f"sunny in {city}"

    print(f"{BOLD}nemovlm demo{RESET}: every answer below comes from the local EMULATOR "
          "(it reports what it received; it is not a model).\n")  # fmt: skip
    with running_emulators() as (nim_url, _fal):
        llama = ChatNemoVLM(model="nvidia/llama-3.1-nemotron-nano-vl-8b-v1", base_url=nim_url)
        nano = ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=nim_url)
        gemma = ChatNemoVLM(model="google/diffusiongemma-26b-a4b-it", base_url=nim_url)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("Llama Nano VL 8B, image (sent before the text)",
             lambda: llama.invoke(ask("What does this chart show?", image))),
            ("Nano 12B v2 VL, reasoning on (/think), streamed",
             lambda: _stream(nano, ask("Which quarter was best?", image), reasoning=True)),
            ("Nano 12B v2 VL, video at 2 fps",
             lambda: nano.invoke(ask("What happens in this clip?", video), video_fps=2.0)),
            ("DiffusionGemma, reasoning on by default (its `reasoning` field)",
             lambda: gemma.invoke(ask("Describe the chart.", image))),
            ("Nano 12B v2 VL, native tool call",
             lambda: nano.bind_tools([get_weather]).invoke("Weather in Paris?")),
            ("Llama Nano VL 8B, tool call through the prompt protocol",
             lambda: llama.bind_tools([get_weather]).invoke("Weather in Oslo?")),
            ("fal Nemotron Diffusion VLM, one image + prompt",
             lambda: ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm", max_tokens=256)
             .invoke(ask("Describe the chart in one sentence.", image))),
            ("fal Nemotron 3 Nano Omni, video with reasoning",
             lambda: ChatNemoFal(model="nvidia/nemotron-3-nano-omni/video", reasoning=True)
             .invoke(ask("Summarise the clip.", video))),
        ]  # fmt: skip
        for title, step in steps:
            print(f"{BOLD}== {title}{RESET}")
            _show(step())
    print(f"{BOLD}Done.{RESET} Set NVIDIA_API_KEY / FAL_KEY and real endpoints for real answers.")
    return 0


def _stream(llm: Any, messages: Any, **kwargs: Any) -> Any:
    full = None
    for chunk in llm.stream(messages, **kwargs):
        full = chunk if full is None else full + chunk
    return full


def _show(msg: Any) -> None:
    reasoning = msg.additional_kwargs.get("reasoning_content")
    if reasoning:
        print(f"{DIM}reasoning: {_clip(reasoning)}{RESET}")
    if msg.tool_calls:
        for call in msg.tool_calls:
            print(f"tool call: {call['name']}({call['args']})")
    if msg.content:
        print(_clip(str(msg.content), 400))
    usage = msg.usage_metadata or {}
    meta = msg.response_metadata
    cost = meta.get("estimated_cost_usd")
    extra = f", est. ${cost:.6f}" if isinstance(cost, (int, float)) else ""
    print(f"{DIM}[{meta.get('model_name')}: {usage.get('input_tokens', '?')} in / "
          f"{usage.get('output_tokens', '?')} out tokens{extra}]{RESET}\n")  # fmt: skip


def _clip(text: str, limit: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- ask -------------------------------------------------------------------------------


def _run_ask(args: argparse.Namespace) -> int:
    from langchain_core.messages import HumanMessage

    from nemovlm.profiles import get_profile

    profile = get_profile(args.model)
    content: list[Any] = [{"type": "text", "text": args.question}]
    for image in args.image:
        content.append(_media_block("image", image))
    if args.video:
        content.append(_media_block("video", args.video))
    kwargs: dict[str, Any] = {"model": args.model}
    if args.reasoning is not None:
        kwargs["reasoning"] = args.reasoning
    if args.max_tokens is not None:
        kwargs["max_tokens"] = args.max_tokens
    llm: Any
    if profile.backend == "fal":
        from langchain_nemovlm import ChatNemoFal

        _aim_at_local_fal_emulator()

        llm = ChatNemoFal(**kwargs)
    else:
        from langchain_nemovlm import ChatNemoVLM

        llm = ChatNemoVLM(base_url=args.base_url, **kwargs)
    full = None
    in_reasoning = False
    for chunk in llm.stream([HumanMessage(content=content)]):
        full = chunk if full is None else full + chunk
        reasoning = chunk.additional_kwargs.get("reasoning_content")
        if reasoning and args.show_reasoning:
            if not in_reasoning:
                print(f"{DIM}", end="")
                in_reasoning = True
            print(reasoning, end="", flush=True)
        if chunk.content:
            if in_reasoning:
                print(f"{RESET}\n", end="")
                in_reasoning = False
            print(chunk.content, end="", flush=True)
    if in_reasoning:
        print(RESET, end="")
    print()
    if full is not None:
        for call in full.tool_calls:
            print(f"tool call: {call['name']}({call['args']})")
        usage = full.usage_metadata or {}
        cost = full.response_metadata.get("estimated_cost_usd")
        if cost is None and profile.price_per_1k_tokens and usage:
            cost = usage.get("total_tokens", 0) / 1000 * profile.price_per_1k_tokens
        extra = f", est. ${cost:.6f}" if isinstance(cost, (int, float)) else ""
        print(f"{DIM}[{usage.get('input_tokens', '?')} in / "
              f"{usage.get('output_tokens', '?')} out tokens{extra}]{RESET}")  # fmt: skip
    return 0


def _aim_at_local_fal_emulator() -> None:
    """After ``nemovlm emulator``'s exports, also send fal uploads there: fal-client's
    upload host has no setting a shell could export."""
    host = os.environ.get("FAL_QUEUE_RUN_HOST", "")
    bundle = os.environ.get("SSL_CERT_FILE")
    if bundle and host.split(":")[0] in ("127.0.0.1", "localhost", "[::1]"):
        from nemovlm.emulator.fal import aim_fal_client

        aim_fal_client(f"https://{host}", bundle)


def _media_block(kind: str, value: str) -> dict[str, Any]:
    """A content block for a path or URL given on the command line (the user's intent)."""
    if value.startswith(("http://", "https://", "data:")):
        return {"type": f"{kind}_url", f"{kind}_url": {"url": value}}
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No such {kind} file: {path}")
    from nemovlm.media import sniff_format

    data = path.read_bytes()
    fmt = sniff_format(data) or ("mp4" if kind == "video" else "png")
    mime = f"{kind}/{fmt}"
    return {"type": kind, "base64": base64.b64encode(data).decode(), "mime_type": mime}


if __name__ == "__main__":
    raise SystemExit(main())
