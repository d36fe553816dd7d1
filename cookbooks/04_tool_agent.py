# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # A tool-calling agent whose tool returns an image
#
# The agent is asked about sales; its tool renders a bar chart (a PNG) and returns it;
# the model then reads the chart to answer. This is where a vision-language model
# earns its keep in an agent: screenshots, plots and scans coming back from tools.
#
# How the image gets to the model: OpenAI-style tool messages carry text only, so the
# package keeps the tool's text in the tool message and sends the image in a user
# message right after it. Models with native tools (Nano 12B v2 VL, DiffusionGemma)
# use OpenAI `tools`; the others (Llama Nano VL 8B, the fal apps) use the package's
# prompt protocol, and you get `tool_calls` either way.
#
# Three ways to run the loop: by hand (`bind_tools` + `ToolMessage`, no extra
# dependency), LangChain's `create_agent` (needs `pip install langchain`), and
# LlamaIndex's `FunctionAgent`.

# %%
from __future__ import annotations

import base64
from typing import Any

from _setup import clip, connect, run_async
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from llama_index.core.agent.workflow import FunctionAgent, ToolCallResult
from llama_index.core.llms import ImageBlock, TextBlock
from llama_index.core.tools import FunctionTool

from langchain_nemovlm import ChatNemoVLM
from llama_index.llms.nemovlm import NemoVLM
from nemovlm.samples import make_chart

setup = connect()
MODEL = "nvidia/nemotron-nano-12b-v2-vl"
QUARTERS = ["Q1", "Q2", "Q3", "Q4"]
SALES = {"EMEA": [3.1, 7.4, 4.0, 9.2], "APAC": [5.5, 2.1, 6.3, 4.8], "AMER": [8.0, 8.5, 7.1, 9.9]}
question = "Plot the quarterly sales for 'EMEA' and tell me which quarter was strongest."


def render_chart(region: str) -> bytes:
    values = SALES.get(region.upper())
    if values is None:
        raise ValueError(f"No sales data for {region!r}; regions: {', '.join(SALES)}.")
    return make_chart(values, QUARTERS, title=f"Sales {region.upper()} (EUR m)")


# %% [markdown]
# ## The tool (LangChain)
# A LangChain tool may return a list of content blocks; a standard `image` block with
# base64 is how a picture comes back.


# %%
@tool
def sales_chart(region: str) -> list[dict[str, Any]]:
    """Render the quarterly sales bar chart of a region (EMEA, APAC or AMER)."""
    png = base64.b64encode(render_chart(region)).decode()
    return [
        {"type": "text", "text": f"Bar chart of quarterly sales for {region.upper()}."},
        {"type": "image", "base64": png, "mime_type": "image/png"},
    ]


def describe(message: BaseMessage) -> str:
    """A one-line account of one step of the agent."""
    if isinstance(message, AIMessage) and message.tool_calls:
        calls = ", ".join(f"{c['name']}({c['args']})" for c in message.tool_calls)
        return f"model calls   {calls}"
    if isinstance(message, ToolMessage):
        blocks = message.content if isinstance(message.content, list) else [message.content]
        text = " ".join(
            b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text"
        )
        images = sum(1 for b in blocks if isinstance(b, dict) and b.get("type") == "image")
        return f"tool result   {text} (+{images} image)"
    if isinstance(message, AIMessage):
        return f"model answers {clip(message.content, 240)}"
    return f"{message.type:13} {clip(message.content, 120)}"


# %% [markdown]
# ## 1. The loop by hand
# Call the model with tools bound; run each tool it asks for; send back a
# `ToolMessage` per call; stop when it answers without calling.

# %%
llm = ChatNemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=512)
agent_llm = llm.bind_tools([sales_chart])
messages: list[BaseMessage] = [HumanMessage(question)]
for _ in range(5):  # a bound on the loop, whatever the model does
    reply = agent_llm.invoke(messages)
    messages.append(reply)
    print(describe(reply))
    if not reply.tool_calls:
        break
    for call in reply.tool_calls:
        result = sales_chart.invoke(call)  # a ToolMessage with the call's id
        messages.append(result)
        print(describe(result))
print()

# %% [markdown]
# ## 2. LangChain `create_agent`
# The same loop as a LangGraph graph. `langchain` is an optional dependency here.

# %%
try:
    from langchain.agents import create_agent

    have_langchain = True
except ImportError:
    have_langchain = False
    print("Skipped create_agent: `pip install langchain` to run this section.\n")

if have_langchain:
    agent = create_agent(
        llm, tools=[sales_chart], system_prompt="You are a sales analyst. Use the tools."
    )
    state = agent.invoke({"messages": [HumanMessage(question)]})
    for message in state["messages"]:
        print(describe(message))
    print()


# %% [markdown]
# ## 3. LlamaIndex `FunctionAgent`
# A LlamaIndex tool returns the picture as an `ImageBlock`. The agent is a workflow:
# stream its events to watch the tool calls go by. (`run_async` runs the coroutine
# from a script or a notebook alike.)


# %%
def li_sales_chart(region: str) -> list[TextBlock | ImageBlock]:
    """Render the quarterly sales bar chart of a region (EMEA, APAC or AMER)."""
    return [
        TextBlock(text=f"Bar chart of quarterly sales for {region.upper()}."),
        ImageBlock(image=render_chart(region), image_mimetype="image/png"),
    ]


async def run_function_agent() -> str:
    li_agent = FunctionAgent(
        tools=[FunctionTool.from_defaults(li_sales_chart)],
        llm=NemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=512),
        system_prompt="You are a sales analyst. Use the tools.",
    )
    handler = li_agent.run(question)
    async for event in handler.stream_events():
        if isinstance(event, ToolCallResult):
            output = event.tool_output
            images = sum(isinstance(b, ImageBlock) for b in output.blocks)
            print(f"model calls   {event.tool_name}({event.tool_kwargs})")
            print(f"tool result   {output.content} (+{images} image)")
    return str(await handler)


print("model answers", clip(run_async(run_function_agent()), 240))
