"""Reasoning: switching it on the wire, and splitting it out of what comes back.

Out: ``map_reasoning`` turns ``RequestOptions.reasoning`` into the model's own switch
(``/think`` in the system prompt, ``chat_template_kwargs``, fal ``reasoning_mode``),
as the profile's ``reasoning`` field says.

In: reasoning may arrive in a ``reasoning_content`` or ``reasoning`` field (the
backend puts those in ``Delta.reasoning``) or inside the content as
``<think>...</think>`` - sometimes only the closing tag. ``ThinkSplitter`` splits
content incrementally: it holds back at most a partial tag, so a tag split across
stream chunks never leaks, and each character is scanned a bounded number of times
(linear in the stream length).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from typing_extensions import assert_never

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import ModelProfile

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
THINK_DIRECTIVE = "/think"


def reasoning_enabled(
    options: RequestOptions, profile: ModelProfile, turns: Sequence[Turn] = ()
) -> bool:
    """Whether the model is expected to reason on this request: as asked, else as the
    user's own system prompt switches it (``/think``), else the model's default."""
    if not profile.can_reason:
        return False
    if options.reasoning is not None:
        return options.reasoning
    if profile.reasoning == "system_think" and _has_directive(turns, THINK_DIRECTIVE):
        return True
    return profile.reasoning_default


def map_reasoning(
    turns: list[Turn], options: RequestOptions, profile: ModelProfile, *, has_video: bool
) -> tuple[list[Turn], dict[str, Any]]:
    """The turns and the extra wire parameters that switch reasoning as asked."""
    params: dict[str, Any] = {}
    if not options.include_reasoning:
        params["include_reasoning"] = False
    if profile.reasoning is None:
        return turns, params
    wanted = reasoning_enabled(options, profile, turns)
    if wanted and has_video and not profile.reasoning_with_video:
        raise UnsupportedInputError(
            f"{profile.model} does not reason over video input: drop reasoning=True (or "
            "/think in the system prompt) for requests that carry a video, or send images."
        )
    if options.reasoning is None:
        return turns, params
    if profile.reasoning == "system_think":
        if options.reasoning:
            turns = _with_system_directive(turns, THINK_DIRECTIVE)
        else:
            turns = _without_system_directive(turns, THINK_DIRECTIVE)
    elif profile.reasoning == "chat_template_thinking":
        if not options.reasoning:
            params["chat_template_kwargs"] = {"thinking": False}
    elif profile.reasoning == "fal_reasoning_mode":
        params["reasoning_mode"] = "think" if options.reasoning else "no_think"
    else:
        assert_never(profile.reasoning)
    return turns, params


def _with_system_directive(turns: list[Turn], directive: str) -> list[Turn]:
    """Put ``directive`` in the (first) system message, creating one if needed."""
    for i, turn in enumerate(turns):
        if turn.role == "system":
            if directive in turn.text.split():
                return turns
            text = f"{directive}\n{turn.text}" if turn.text else directive
            parts = [TextPart(text)] + [p for p in turn.parts if not isinstance(p, TextPart)]
            return [*turns[:i], Turn("system", parts), *turns[i + 1 :]]
    return [Turn("system", [TextPart(directive)]), *turns]


def _has_directive(turns: Sequence[Turn], directive: str) -> bool:
    return any(t.role == "system" and directive in t.text.split() for t in turns)


def _without_system_directive(turns: list[Turn], directive: str) -> list[Turn]:
    """Remove ``directive`` from system messages (``reasoning=False`` wins over a
    ``/think`` left in a prompt template)."""
    if not _has_directive(turns, directive):
        return turns
    out = []
    for turn in turns:
        if turn.role == "system" and directive in turn.text.split():
            text = re.sub(rf"(?<!\S){re.escape(directive)}(?!\S)", "", turn.text).strip()
            parts = [TextPart(text)] if text else []
            turn = Turn("system", parts + [p for p in turn.parts if not isinstance(p, TextPart)])
        out.append(turn)
    return [t for t in out if t.role != "system" or t.parts]


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


State = Literal["start", "think", "maybe", "content"]


@dataclass
class ThinkSplitter:
    """Split streamed content into (answer, reasoning), tag by tag.

    ``expect_reasoning``: the request asked for reasoning, so text before a lone
    ``</think>`` is reasoning; until that tag or the end arrives, such text is held
    back rather than shown as answer and taken back later.
    """

    expect_reasoning: bool = False
    _state: State = "start"
    _buf: str = ""
    _held: list[str] = field(default_factory=list, repr=False)
    """In "maybe": text with no closing tag in it, held until the tag or the end decides
    what it is. A list, not one growing string: appending stays linear."""
    _strip_lead: bool = False
    _strip_reason_lead: bool = False
    _seen_field: bool = field(default=False, repr=False)

    def saw_reasoning_field(self) -> None:
        """The server sends reasoning in its own field: content is all answer."""
        self._seen_field = True
        if self._state in ("start", "maybe"):
            self._state = "content"
            self._buf = self._take_held() + self._buf

    def feed(self, text: str) -> tuple[str, str]:
        """Answer and reasoning text that can be released after ``text``."""
        self._buf += text
        answer: list[str] = []
        reasoning: list[str] = []
        while self._step(answer, reasoning):
            pass
        return "".join(answer), "".join(reasoning)

    def finish(self) -> tuple[str, str]:
        """Release what is held back at the end of the stream."""
        answer, reasoning = self.feed("")
        rest, self._buf = self._take_held() + self._buf, ""
        if self._state == "think":
            return answer, reasoning + rest
        if self._strip_lead:
            rest = rest.lstrip()
        return answer + rest, reasoning

    def _step(self, answer: list[str], reasoning: list[str]) -> bool:
        """Advance one state; True while there may be more to do now."""
        buf = self._buf
        if self._state == "start":
            head = buf.lstrip()
            if not head:
                return False
            if head.startswith(OPEN_TAG):
                self._buf = head[len(OPEN_TAG) :]
                self._state = "think"
                self._strip_reason_lead = True
                return True
            if OPEN_TAG.startswith(head):
                return False  # maybe the start of "<think>": wait for more
            close = buf.find(CLOSE_TAG)
            if close >= 0:  # closing tag only: what came before it was reasoning
                reasoning.append(buf[:close])
                self._after_close(close)
                return True
            self._state = "maybe" if self.expect_reasoning and not self._seen_field else "content"
            return True
        if self._state in ("think", "maybe"):
            if self._strip_reason_lead:
                # The newline after "<think>" may come in a later chunk than the tag.
                buf = self._buf = buf.lstrip()
                if not buf:
                    return False
                self._strip_reason_lead = False
            close = buf.find(CLOSE_TAG)
            if close >= 0:
                reasoning.append(self._take_held() + buf[:close])
                self._after_close(close)
                return True
            # Only a partial tag stays in the buffer, so each character is scanned once.
            keep = _partial_suffix(buf, CLOSE_TAG)
            if self._state == "think":
                reasoning.append(buf[: len(buf) - keep])
            else:
                self._held.append(buf[: len(buf) - keep])
            self._buf = buf[len(buf) - keep :]
            return False
        # content
        if self._strip_lead:
            buf = self._buf = buf.lstrip()
            if not buf:
                return False
            self._strip_lead = False
        close = buf.find(CLOSE_TAG)
        if close >= 0:  # a stray closing tag never stays in the answer
            answer.append(buf[:close])
            self._buf = buf[close + len(CLOSE_TAG) :]
            return True
        keep = _partial_suffix(buf, CLOSE_TAG)
        answer.append(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _after_close(self, close: int) -> None:
        self._buf = self._buf[close + len(CLOSE_TAG) :]
        self._state = "content"
        self._strip_lead = True

    def _take_held(self) -> str:
        held, self._held = "".join(self._held), []
        return held
