"""Reasoning: the model's own switch on the way out, the split on the way back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nemovlm.errors import UnsupportedInputError
from nemovlm.messages import TextPart, Turn
from nemovlm.options import RequestOptions
from nemovlm.profiles import get_profile
from nemovlm.reasoning import ThinkSplitter, map_reasoning

NANO12 = get_profile("nvidia/nemotron-nano-12b-v2-vl")
GEMMA = get_profile("google/diffusiongemma-26b-a4b-it")
OMNI = get_profile("nvidia/nemotron-3-nano-omni/video")
USER = [Turn("user", [TextPart("hi")])]


def split_all(pieces: list[str], expect: bool = False) -> tuple[str, str]:
    splitter = ThinkSplitter(expect_reasoning=expect)
    answer, reasoning = [], []
    for piece in pieces:
        a, r = splitter.feed(piece)
        answer.append(a)
        reasoning.append(r)
    a, r = splitter.finish()
    return "".join(answer) + a, "".join(reasoning) + r


def test_nano12_reasoning_on_adds_think_to_a_new_system_message() -> None:
    turns, params = map_reasoning(USER, RequestOptions(reasoning=True), NANO12, has_video=False)
    assert turns[0].role == "system" and turns[0].text == "/think"
    assert params == {}


def test_nano12_reasoning_on_keeps_the_users_system_prompt() -> None:
    turns = [Turn("system", [TextPart("Be brief.")]), *USER]
    out, _ = map_reasoning(turns, RequestOptions(reasoning=True), NANO12, has_video=False)
    assert out[0].text == "/think\nBe brief."
    assert len(out) == 2


def test_nano12_reasoning_off_sends_no_directive() -> None:
    turns, params = map_reasoning(USER, RequestOptions(reasoning=False), NANO12, has_video=False)
    assert turns == USER and params == {}


def test_nano12_refuses_reasoning_with_video() -> None:
    with pytest.raises(UnsupportedInputError, match="video"):
        map_reasoning(USER, RequestOptions(reasoning=True), NANO12, has_video=True)


def test_diffusiongemma_reasoning_off_uses_chat_template_kwargs() -> None:
    _, params = map_reasoning(USER, RequestOptions(reasoning=False), GEMMA, has_video=False)
    assert params == {"chat_template_kwargs": {"thinking": False}}


def test_diffusiongemma_include_reasoning_false_is_sent() -> None:
    _, params = map_reasoning(USER, RequestOptions(include_reasoning=False), GEMMA, has_video=False)
    assert params == {"include_reasoning": False}


def test_omni_reasoning_maps_to_reasoning_mode() -> None:
    _, on = map_reasoning(USER, RequestOptions(reasoning=True), OMNI, has_video=True)
    _, off = map_reasoning(USER, RequestOptions(reasoning=False), OMNI, has_video=True)
    assert on == {"reasoning_mode": "think"} and off == {"reasoning_mode": "no_think"}


def test_think_tags_split_reasoning_from_answer() -> None:
    assert split_all(["<think>", "\nweigh it\n</think>\n\nIt is a cat."]) == (
        "It is a cat.",
        "weigh it\n",
    )


def test_lone_closing_tag_marks_what_came_before_as_reasoning() -> None:
    assert split_all(["weigh it</think>It is a cat."]) == ("It is a cat.", "weigh it")


def test_lone_closing_tag_split_across_chunks_when_reasoning_expected() -> None:
    answer, reasoning = split_all(["weigh ", "it</th", "ink>", "It is", " a cat."], expect=True)
    assert (answer, reasoning) == ("It is a cat.", "weigh it")


def test_expected_reasoning_without_any_tag_ends_up_as_answer() -> None:
    assert split_all(["It is ", "a cat."], expect=True) == ("It is a cat.", "")


def test_tag_split_in_every_position_never_leaks() -> None:
    text = "<think>abc</think>answer"
    for cut in range(1, len(text)):
        assert split_all([text[:cut], text[cut:]]) == ("answer", "abc"), cut


def test_no_tags_streams_through_without_holding_back() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Hello ") == ("Hello ", "")
    assert splitter.feed("world") == ("world", "")


def test_partial_closing_tag_is_held_then_released_as_text() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("a </thi") == ("a ", "")
    assert splitter.finish() == ("</thi", "")


def test_reasoning_field_makes_content_all_answer() -> None:
    splitter = ThinkSplitter(expect_reasoning=True)
    splitter.saw_reasoning_field()
    assert splitter.feed("The answer") == ("The answer", "")


def test_unterminated_think_is_all_reasoning() -> None:
    assert split_all(["<think>still thinking"]) == ("", "still thinking")


@settings(max_examples=200, deadline=None)
@given(
    reasoning=st.text(alphabet="ab<>/think \n", max_size=30).filter(lambda s: "</think>" not in s),
    answer=st.text(alphabet="xy<>/ \n", max_size=30).filter(lambda s: "</think>" not in s),
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8),
    closing_only=st.booleans(),
)
def test_any_chunking_gives_the_same_split_as_the_whole(
    reasoning: str, answer: str, cuts: list[int], closing_only: bool
) -> None:
    text = ("" if closing_only else "<think>") + reasoning + "</think>" + answer
    whole = split_all([text], expect=True)
    points = sorted({c for c in cuts if 0 < c < len(text)})
    pieces = [text[i:j] for i, j in zip([0, *points], [*points, len(text)])]
    assert split_all(pieces, expect=True) == whole


def test_a_think_in_the_users_own_system_prompt_counts_as_reasoning_on() -> None:
    from nemovlm.reasoning import reasoning_enabled

    turns = [Turn("system", [TextPart("/think\nBe brief.")]), *USER]
    assert reasoning_enabled(RequestOptions(), NANO12, turns) is True
    assert reasoning_enabled(RequestOptions(), NANO12, USER) is False


def test_reasoning_off_removes_a_think_left_in_the_system_prompt() -> None:
    turns = [Turn("system", [TextPart("/think\nBe brief.")]), *USER]
    out, _ = map_reasoning(turns, RequestOptions(reasoning=False), NANO12, has_video=False)
    assert out[0].text == "Be brief."
    alone = [Turn("system", [TextPart("/think")]), *USER]
    out, _ = map_reasoning(alone, RequestOptions(reasoning=False), NANO12, has_video=False)
    assert [t.role for t in out] == ["user"]


def test_a_users_think_with_video_is_refused_before_sending() -> None:
    turns = [Turn("system", [TextPart("/think")]), *USER]
    with pytest.raises(UnsupportedInputError, match="video"):
        map_reasoning(turns, RequestOptions(), NANO12, has_video=True)
