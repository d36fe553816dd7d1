# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Structured extraction: a chart image into a pydantic model
#
# Describe what you want as a pydantic model; get an instance back.
#
# - Nano 12B v2 VL and DiffusionGemma honour `response_format: json_schema`, so the
#   server constrains the output to your schema.
# - Llama Nano VL 8B and the fal apps do not; the package puts the schema in the
#   prompt and parses the reply (a reply that does not parse raises, or comes back as
#   `parsing_error` with `include_raw=True`).
#
# Offline, the emulator answers with values that fit the schema but are made up; a real
# model reads them off the chart. The last cell compares the extraction with the data
# the chart was drawn from.

# %%
from __future__ import annotations

import base64

from _setup import clip, connect
from langchain_core.messages import HumanMessage
from llama_index.core.llms import ChatMessage, ImageBlock, TextBlock
from llama_index.core.prompts import ChatPromptTemplate
from pydantic import BaseModel, Field

from langchain_nemovlm import ChatNemoFal, ChatNemoVLM
from llama_index.llms.nemovlm import NemoFal, NemoVLM
from nemovlm.samples import make_chart

setup = connect()

LABELS, VALUES = ["Q1", "Q2", "Q3", "Q4"], [3.0, 7.0, 4.0, 9.0]
chart_path = setup.workdir / "revenue.png"
chart_path.write_bytes(make_chart(VALUES, LABELS, title="Revenue 2026"))
chart_b64 = base64.b64encode(chart_path.read_bytes()).decode()

# %% [markdown]
# ## The schema
# Field descriptions travel with the schema: they are instructions to the model.


# %%
class Bar(BaseModel):
    label: str = Field(description="The label under the bar, as printed.")
    value: float = Field(description="The number printed at the top of the bar.")


class ChartData(BaseModel):
    """The data shown by a bar chart."""

    title: str = Field(description="The chart's title.")
    bars: list[Bar] = Field(description="Every bar, left to right.")


instruction = "Extract the title and every bar of this chart."
messages = [
    HumanMessage(
        content=[
            {"type": "text", "text": instruction},
            {"type": "image", "base64": chart_b64, "mime_type": "image/png"},
        ]
    )
]

# %% [markdown]
# ## LangChain: `with_structured_output`

# %%
results: dict[str, ChartData] = {}
for llm in (
    ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url),
    ChatNemoVLM(model="nvidia/llama-3.1-nemotron-nano-vl-8b-v1", base_url=setup.nim_base_url),
    ChatNemoFal(model="fal-ai/nemotron-diffusion-vlm"),
):
    how = "json_schema" if llm.nemo_profile.json_schema else "prompted"
    data = llm.with_structured_output(ChartData).invoke(messages)
    assert isinstance(data, ChartData)
    results[llm.model] = data
    print(f"{llm.model} ({how}):\n  {data!r}")

# %% [markdown]
# `include_raw=True` keeps the model's message next to the parsed object, and turns a
# reply that does not parse into `parsing_error` instead of an exception.

# %%
nano = ChatNemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url)
out = nano.with_structured_output(ChartData, include_raw=True).invoke(messages)
assert isinstance(out, dict)
print("raw     :", clip(out["raw"].content, 160))
print("parsed  :", repr(out["parsed"]))
print("error   :", out["parsing_error"], "\n")

# %% [markdown]
# ## LlamaIndex: `structured_predict` and `as_structured_llm`
# A `ChatPromptTemplate` can hold image blocks next to its text template.

# %%
template = ChatPromptTemplate(
    message_templates=[
        ChatMessage(
            role="user",
            blocks=[ImageBlock(path=chart_path), TextBlock(text="{instruction}")],
        )
    ]
)
for li_llm in (
    NemoVLM(model="nvidia/nemotron-nano-12b-v2-vl", base_url=setup.nim_base_url),
    NemoFal(model="fal-ai/nemotron-diffusion-vlm"),
):
    data = li_llm.structured_predict(ChartData, template, instruction=instruction)
    print(f"LlamaIndex {li_llm.model}:\n  {data!r}")

structured = NemoVLM(
    model="google/diffusiongemma-26b-a4b-it", base_url=setup.nim_base_url
).as_structured_llm(ChartData)
response = structured.chat(
    [ChatMessage(role="user", blocks=[ImageBlock(path=chart_path), TextBlock(text=instruction)])]
)
print("as_structured_llm (DiffusionGemma):", repr(response.raw), "\n")

# %% [markdown]
# ## Did it read the chart?
# The chart was drawn from known numbers, so the extraction can be checked.

# %%
truth = {label: value for label, value in zip(LABELS, VALUES)}
for model, data in results.items():
    got = {bar.label: bar.value for bar in data.bars}
    verdict = "matches the chart" if got == truth else "does not match the chart"
    print(f"{model}: {verdict}")
if setup.nim_emulated:
    print("(the emulator makes values up, so no match is expected offline)")
