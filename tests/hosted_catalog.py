"""Test helpers for the hosted-mode emulator: its test hooks, read over HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import loopback
import pytest

from nemovlm.emulator import start_nim_emulator
from nemovlm.samples import make_photo

KEY = "test-key"
PHOTO = make_photo(800, 600)  # ~154 KB of JPEG: ~205,000 base64 characters, over 180,000
PHOTO_B = make_photo(810, 600)  # another photo of the same kind
SMALL = make_photo(640, 480)  # ~99 KB: two of them are over the budget, one is not


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Catalog:
    """The hosted-mode emulator's test hooks (``nemovlm.emulator.hosted``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.base_url = url + "/v1"
        self.assets_url = url + "/v2/nvcf/assets"

    def settings(self, **extra: Any) -> dict[str, Any]:
        """What a model needs to treat this emulator as the catalog."""
        return {
            "base_url": self.base_url,
            "api_key": KEY,
            "hosted": True,
            "assets_url": self.assets_url,
            **extra,
        }

    def live(self, wait_empty: float | None = None) -> list[dict[str, Any]]:
        params = {"wait_empty": str(wait_empty)} if wait_empty is not None else {}
        response = loopback.http.get(f"{self.url}/emulator/assets", params=params, timeout=30)
        response.raise_for_status()
        assets: list[dict[str, Any]] = response.json()
        return assets

    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = loopback.http.get(f"{self.url}/emulator/requests").json()
        return records

    def calls(self) -> list[tuple[str, str]]:
        """(method, kind) of every call: chat, create, upload, delete."""
        out = []
        for r in self.records():
            path = r["path"]
            kind = (
                "chat"
                if path.endswith("/chat/completions")
                else "upload"
                if path.startswith("/emulator/storage/")
                else "delete"
                if r["method"] == "DELETE"
                else "create"
            )
            out.append((r["method"], kind))
        return out

    def chats(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["path"].endswith("/chat/completions")]

    def last_chat(self) -> dict[str, Any]:
        chats = self.chats()
        assert chats, "the emulator received no chat request"
        return chats[-1]

    def clear(self) -> None:
        loopback.http.delete(f"{self.url}/emulator/requests").raise_for_status()
        loopback.http.delete(f"{self.url}/emulator/hold").raise_for_status()
        barrier = loopback.http.post(f"{self.url}/emulator/assets/barrier", json={"uploads": 0})
        barrier.raise_for_status()

    def fail(self, step: str, status: int = 500, times: int = 1) -> None:
        loopback.http.post(
            f"{self.url}/emulator/assets/fail",
            json={"step": step, "status": status, "times": times},
        ).raise_for_status()

    def barrier(self, uploads: int) -> None:
        loopback.http.post(
            f"{self.url}/emulator/assets/barrier", json={"uploads": uploads}
        ).raise_for_status()

    def most_uploading(self) -> int:
        stats: dict[str, int] = loopback.http.get(f"{self.url}/emulator/assets/stats").json()
        return stats["most_uploading"]

    def wait_uploading(self, count: int = 1) -> int:
        stats: dict[str, int] = loopback.http.get(
            f"{self.url}/emulator/assets/stats",
            params={"wait_uploading": str(count)},
            timeout=30,
        ).json()
        return stats["uploading"]

    def hold(self) -> None:
        loopback.http.post(f"{self.url}/emulator/hold").raise_for_status()

    def wait_held(self) -> int:
        held: int = loopback.http.get(
            f"{self.url}/emulator/hold", params={"timeout": "20"}, timeout=30
        ).json()["held"]
        return held

    def release(self) -> None:
        loopback.http.delete(f"{self.url}/emulator/hold").raise_for_status()

    def advance(self, seconds: float) -> None:
        moved = loopback.http.post(f"{self.url}/emulator/clock", json={"advance": seconds})
        moved.raise_for_status()


def asset_ids(chat: dict[str, Any]) -> list[str]:
    header = chat["headers"].get("nvcf-input-asset-references", "")
    return [i for i in header.split(",") if i]


def media_urls(body: dict[str, Any]) -> list[str]:
    urls = []
    for message in body["messages"]:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                kind = part.get("type")
                if kind in ("image_url", "video_url"):
                    urls.append(part[kind]["url"])
    return urls


@pytest.fixture(scope="session")
def catalog_server() -> Iterator[Catalog]:
    server = start_nim_emulator(hosted=True)
    yield Catalog(server.url)
    server.stop()


@pytest.fixture
def catalog(catalog_server: Catalog) -> Iterator[Catalog]:
    """The hosted-mode emulator, its record cleared; no asset may be left after a test."""
    catalog_server.clear()
    yield catalog_server
    catalog_server.release()
