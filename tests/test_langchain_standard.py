"""LangChain's own conformance suites for ChatNemoVLM.

The unit suite runs in full. The integration suite runs against the NIM emulator; the
few tests that need a real model's judgement are marked ``xfail`` with the reason
(the emulator answers from what it received, it does not understand).
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from lc_standard import SerdesByAllowList

from langchain_nemovlm import ChatNemoVLM

NANO12 = "nvidia/nemotron-nano-12b-v2-vl"

_NO_INTERNET = (
    "downloads a sample image from the internet, and tests here reach only loopback; "
    "the same behaviour runs on generated images in tests/test_chat_nemo_vlm.py"
)


class TestChatNemoVLMUnit(SerdesByAllowList, ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatNemoVLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": NANO12, "base_url": "http://127.0.0.1:9/v1", "api_key": "test-key"}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"NVIDIA_API_KEY": "env-key", "NVIDIA_BASE_URL": "http://127.0.0.1:9/v1"},
            {"model": NANO12},
            {"api_key": "env-key"},
        )

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_video_inputs(self) -> bool:
        return True


def _claims(name: str) -> bool:
    """What ChatNemoVLM's LangChain profile (from the nemovlm profile) says of NANO12."""
    profile = ChatNemoVLM(model=NANO12, base_url="http://127.0.0.1:9/v1").profile
    assert profile is not None
    return bool(profile.get(name))


class TestChatNemoVLMIntegration(ChatModelIntegrationTests):
    """Every capability flag is what the model's profile claims."""

    @pytest.fixture(autouse=True)
    def _point_at_emulator(self, nim_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NVIDIA_BASE_URL", nim_url)

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatNemoVLM

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": NANO12}

    @property
    def has_tool_calling(self) -> bool:
        return _claims("tool_calling")

    @property
    def has_tool_choice(self) -> bool:
        return _claims("tool_choice")

    @property
    def has_structured_output(self) -> bool:
        return _claims("structured_output")

    @property
    def supports_json_mode(self) -> bool:
        # response_format json_object where the profile takes response_format, the
        # prompt protocol elsewhere: every model has JSON mode.
        return _claims("structured_output")

    @property
    def supports_image_inputs(self) -> bool:
        return _claims("image_inputs")

    @property
    def supports_image_urls(self) -> bool:
        # The suite's image-URL test downloads its image first (xfailed below: no
        # internet here); the URL itself would reach the emulator unfetched.
        return _claims("image_url_inputs")

    @property
    def supports_image_tool_message(self) -> bool:
        return _claims("image_tool_message")

    @property
    def supports_pdf_inputs(self) -> bool:
        return _claims("pdf_inputs")

    @property
    def supports_pdf_tool_message(self) -> bool:
        return _claims("pdf_inputs")

    @property
    def supports_audio_inputs(self) -> bool:
        return _claims("audio_inputs")

    @property
    def supports_video_inputs(self) -> bool:
        return _claims("video_inputs")

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # every NIM reply has usage

    @property
    def supports_model_override(self) -> bool:
        # One instance serves one model: its profile decides the wire rules, so a call
        # naming another model is refused (test_a_call_naming_another_model_is_refused).
        return False

    # The suite only accepts overrides marked xfail; these fail at once, before the
    # suite's own body could reach for the internet.
    @pytest.mark.xfail(reason=_NO_INTERNET, strict=True)
    def test_image_inputs(self, model: BaseChatModel) -> None:
        pytest.fail(_NO_INTERNET)

    @pytest.mark.xfail(reason=_NO_INTERNET, strict=True)
    def test_image_tool_message(self, model: BaseChatModel) -> None:
        pytest.fail(_NO_INTERNET)
