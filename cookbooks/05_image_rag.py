# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # RAG over a folder of images
#
# 1. **Caption** every image with a vision-language model.
# 2. **Index** the captions in a vector store.
# 3. **Retrieve** the image whose caption best matches a question.
# 4. **Answer** with the retrieved image itself attached, so the model reads the
#    picture, not just our caption of it.
#
# Once with LangChain (`InMemoryVectorStore`), once with LlamaIndex (`VectorStoreIndex`
# and a query engine with `multimodal=True`).
#
# **About the embedding.** To run anywhere without downloading a model, the index uses
# a tiny bag-of-words embedding written below (hashed word counts, cosine similarity).
# It matches words, not meaning: swap in a real embedding model (for example NVIDIA's
# `nv-embedqa` NIMs) for real retrieval. Offline, the emulator's "captions" only echo
# what it received, so we index each caption together with the file name, as real
# systems often do; online, the captions carry the content.

# %%
from __future__ import annotations

import base64
import math
import re
import zlib
from pathlib import Path

from _setup import clip, connect
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.messages import HumanMessage
from langchain_core.vectorstores import InMemoryVectorStore
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import BaseEmbedding
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import ImageDocument, ImageNode

from langchain_nemovlm import ChatNemoVLM
from llama_index.llms.nemovlm import NemoVLM, NemoVLMMultiModal
from nemovlm.samples import make_chart, make_image

setup = connect()
MODEL = "nvidia/nemotron-nano-12b-v2-vl"
CAPTION_PROMPT = "Write a one-sentence caption for this image: what it shows and its key values."

# %% [markdown]
# ## A folder of images
# Charts and signs drawn by `nemovlm.samples`; point `folder` at your own pictures.

# %%
folder = setup.workdir / "images"
folder.mkdir()
pictures = {
    "revenue_by_quarter.png": make_chart([3, 7, 4, 9], ["Q1", "Q2", "Q3", "Q4"], "Revenue"),
    "headcount_by_team.png": make_chart([12, 30, 8, 5], ["Sales", "Eng", "HR", "Ops"], "Headcount"),
    "cloud_costs_by_service.png": make_chart([40, 25, 10], ["Compute", "Storage", "Network"]),
    "website_visits_by_month.png": make_chart([120, 95, 143], ["Jan", "Feb", "Mar"], "Visits"),
    "stop_sign.png": make_image(200, 200, text="STOP", color=(200, 20, 20)),
    "parking_sign.png": make_image(200, 200, text="P", color=(20, 60, 200)),
}
for name, data in pictures.items():
    (folder / name).write_bytes(data)
paths = sorted(folder.glob("*.png"))
print(f"{len(paths)} images in {folder}")

# %% [markdown]
# ## A bag-of-words embedding (local, deterministic, and only a stand-in)
# Each word is hashed into one of 512 buckets; the vector is the normalised counts.

# %%
DIMS = 512
STOPWORDS = {"a", "an", "and", "the", "of", "in", "is", "which", "what", "by", "for", "to", "this"}


def bag_of_words(text: str) -> list[float]:
    vector = [0.0] * DIMS
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        if word not in STOPWORDS:
            vector[zlib.crc32(word.encode()) % DIMS] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class BagOfWordsEmbeddings(Embeddings):
    """LangChain's embedding interface over ``bag_of_words``."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [bag_of_words(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return bag_of_words(text)


class BagOfWordsEmbedding(BaseEmbedding):
    """LlamaIndex's embedding interface over ``bag_of_words``."""

    def _get_text_embedding(self, text: str) -> list[float]:
        return bag_of_words(text)

    def _get_query_embedding(self, query: str) -> list[float]:
        return bag_of_words(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return bag_of_words(query)


def index_text(path: Path, caption: str) -> str:
    return f"{path.stem.replace('_', ' ')}. {caption}"


# %% [markdown]
# ## LangChain
# Caption the folder in one `batch` call (requests run concurrently), index, retrieve,
# answer with the image attached.


# %%
def image_block(path: Path) -> dict[str, str]:
    data = base64.b64encode(path.read_bytes()).decode()
    return {"type": "image", "base64": data, "mime_type": "image/png"}


llm = ChatNemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=200)
captions = llm.batch(
    [
        [HumanMessage(content=[{"type": "text", "text": CAPTION_PROMPT}, image_block(p)])]
        for p in paths
    ],
    config={"max_concurrency": 4},
)
store = InMemoryVectorStore(embedding=BagOfWordsEmbeddings())
store.add_documents(
    [
        Document(page_content=index_text(p, str(c.content)), metadata={"path": str(p)})
        for p, c in zip(paths, captions)
    ]
)
print("caption of", paths[0].name, "->", clip(captions[0].content, 160))

question = "Which team has the largest headcount?"
[(hit, score)] = store.similarity_search_with_score(question, k=1)
retrieved = Path(hit.metadata["path"])
print(f"retrieved {retrieved.name} (score {score:.2f})")

answer = llm.invoke(
    [
        HumanMessage(
            content=[
                {"type": "text", "text": f"Image {retrieved.name}. Answer from it: {question}"},
                image_block(retrieved),
            ]
        )
    ]
)
print("LangChain answer:", clip(answer.content, 260), "\n")

# %% [markdown]
# ## LlamaIndex
# Captions through the multi-modal LLM interface (`complete(prompt, image_documents=...)`);
# the index holds `ImageNode`s (caption text for retrieval, the image path for the
# answer); `RetrieverQueryEngine(..., multimodal=True)` sends the retrieved images to
# `NemoVLM` as `ImageBlock`s.

# %%
captioner = NemoVLMMultiModal(model=MODEL, base_url=setup.nim_base_url, max_tokens=200)
nodes = []
for path in paths:
    caption = captioner.complete(
        CAPTION_PROMPT, image_documents=[ImageDocument(image_path=str(path))]
    )
    nodes.append(
        ImageNode(
            text=index_text(path, caption.text),
            image_path=str(path),
            metadata={"file_name": path.name},
            excluded_embed_metadata_keys=["file_name"],
        )
    )

index = VectorStoreIndex(nodes, embed_model=BagOfWordsEmbedding())
engine = RetrieverQueryEngine.from_args(
    index.as_retriever(similarity_top_k=1),
    llm=NemoVLM(model=MODEL, base_url=setup.nim_base_url, max_tokens=300),
    multimodal=True,
)
question = "How are cloud costs split across services?"
response = engine.query(question)
source = response.source_nodes[0]
print(f"retrieved {source.node.metadata['file_name']} (score {source.score:.2f})")
print("LlamaIndex answer:", clip(str(response), 260))
