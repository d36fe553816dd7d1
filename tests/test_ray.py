"""``nemovlm.ray.NemoVLMPredictor`` on a local Ray (``ray.init(num_cpus=2)``): every row
answered over HTTP by the emulator, failures as rows.

Needs the ``ray`` extra (``pip install -e '.[ray]'``); skipped without it. The README
and ``.ci/run`` run this file on its own after installing the extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import loopback
import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: pip install -e '.[ray]' to run the Ray tests"
)
pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install -e '.[ray]'")

from hosted_catalog import (  # noqa: E402
    PHOTO,
    PHOTO_B,
    Catalog,
    asset_ids,
    catalog,
    catalog_server,
)

from nemovlm.emulator import create_nim_app  # noqa: E402
from nemovlm.emulator.server import RunningServer  # noqa: E402
from nemovlm.ray import NemoVLMPredictor  # noqa: E402
from nemovlm.samples import make_image  # noqa: E402

__all__ = ["catalog", "catalog_server"]  # fixtures, imported for pytest

NANO_12B = "nvidia/nemotron-nano-12b-v2-vl"


@pytest.fixture(scope="module")
def nim() -> Iterator[RunningServer]:
    with RunningServer(create_nim_app(recorded_requests=1000)) as server:
        yield server


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def prompts_received(nim: RunningServer) -> list[str]:
    records = loopback.http.get(f"{nim.url}/emulator/requests").json()
    texts = []
    for record in records:
        if record["path"].endswith("/chat/completions"):
            content = record["body"]["messages"][-1]["content"]
            texts.append(" ".join(p["text"] for p in content if p["type"] == "text"))
    return texts


def predict(
    dataset: Any, nim: RunningServer, actors: int = 1, **settings: Any
) -> list[dict[str, Any]]:
    # One actor unless a test is about several: each is a fresh process importing Ray
    # and nemovlm, the most expensive part of these tests.
    loopback.http.delete(f"{nim.url}/emulator/requests").raise_for_status()
    kwargs = {"model": NANO_12B, "base_url": nim.url + "/v1", **settings}
    return dataset.map_batches(  # type: ignore[no-any-return]
        NemoVLMPredictor,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=0.5,  # or two actors hold both CPUs and the read tasks never run
        batch_size=4,
    ).take_all()


def test_every_row_of_bytes_is_answered_and_a_bad_row_gets_an_error(
    local_ray: None, nim: RunningServer
) -> None:
    items = [
        {"id": f"b{i}", "image": make_image(32, 32, text=str(i)), "prompt": f"caption #{i}"}
        for i in range(9)
    ]
    items.append({"id": "bad", "image": b"not an image", "prompt": "never sent"})

    rows = {r["id"]: r for r in predict(ray.data.from_items(items), nim, actors=2)}

    assert set(rows) == {item["id"] for item in items}
    assert sorted(prompts_received(nim)) == sorted(f"caption #{i}" for i in range(9))
    for item_id, row in rows.items():
        if item_id == "bad":
            continue
        assert row["error"] is None, row["error"]
        assert row["answer"].startswith(f"[nemovlm emulator] {NANO_12B}")
        assert f"text: {row['prompt']}" in row["answer"]
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    assert rows["bad"]["error"].startswith("UnsupportedInputError: ")
    assert rows["bad"]["answer"] is None


def test_paths_are_read_and_a_missing_file_is_an_error_row(
    local_ray: None, nim: RunningServer, tmp_path: Path
) -> None:
    for i in range(3):
        (tmp_path / f"tile{i}.png").write_bytes(make_image(40, 30, text=str(i)))
    items = [{"image": str(tmp_path / f"tile{i}.png"), "prompt": f"path #{i}"} for i in range(3)]
    items.append({"image": str(tmp_path / "missing.png"), "prompt": "never sent"})

    rows = {r["prompt"]: r for r in predict(ray.data.from_items(items), nim)}

    assert sorted(prompts_received(nim)) == ["path #0", "path #1", "path #2"]
    for i in range(3):
        assert "image 1: png 40x30" in rows[f"path #{i}"]["answer"]
    assert "No such file to send" in rows["never sent"]["error"]


def test_read_images_arrays_are_answered_with_the_predictors_prompt(
    local_ray: None, nim: RunningServer, tmp_path: Path
) -> None:
    for i in range(5):
        (tmp_path / f"photo{i}.png").write_bytes(make_image(48, 36, text=str(i)))

    rows = predict(ray.data.read_images(str(tmp_path)), nim, prompt="What is this?")

    assert len(rows) == 5
    assert prompts_received(nim) == ["What is this?"] * 5
    for row in rows:
        assert row["error"] is None, row["error"]
        assert "image 1: png 48x36" in row["answer"]


def test_reasoning_lands_in_its_own_column(
    local_ray: None, nim: RunningServer, tmp_path: Path
) -> None:
    items = [{"image": make_image(32, 32), "prompt": f"think #{i}"} for i in range(3)]
    rows = predict(ray.data.from_items(items), nim, reasoning=True)
    for row in rows:
        assert row["reasoning"].startswith("Reasoning (emulated)")
        assert "<think>" not in row["answer"]


def test_the_predictor_sends_photos_to_the_hosted_catalog_as_assets_and_deletes_them(
    local_ray: None, catalog: Catalog
) -> None:
    items = [{"id": "a", "image": PHOTO, "prompt": "Read it."},
             {"id": "b", "image": PHOTO_B, "prompt": "Read it."}]  # fmt: skip
    kwargs = {"model": NANO_12B, **catalog.settings()}
    rows = (
        ray.data.from_items(items)
        .map_batches(
            NemoVLMPredictor,
            fn_constructor_kwargs=kwargs,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=0.5,
            batch_size=2,
        )
        .take_all()
    )
    assert [row["error"] for row in rows] == [None, None]
    assert all(len(asset_ids(chat)) == 1 for chat in catalog.chats())
    assert catalog.calls().count(("DELETE", "delete")) == 2 and catalog.live() == []
