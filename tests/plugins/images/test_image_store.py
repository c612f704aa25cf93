"""The image store: records, containerd's update and filter rules, events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from runtime.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from runtime.pkg.registry.types import Descriptor
from runtime.plugins.images.api import Image, ImageCreate, ImageDelete, ImageUpdate
from runtime.plugins.images.store import ImageStore
from runtime.plugins.metadata.db import Database

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def _target(n: int, media_type: str = MANIFEST, **annotations: str) -> Descriptor:
    return Descriptor(
        mediaType=media_type,
        digest="sha256:" + f"{n:x}" * 64,
        size=100 + n,
        annotations=annotations,
    )


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, msgspec.Struct]] = []

    def __call__(self, namespace: str, topic: str, event: msgspec.Struct) -> None:
        self.seen.append((namespace, topic, event))


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def store(tmp_path: Path, events: Events) -> Iterator[ImageStore]:
    db = Database(tmp_path / "meta.db", synchronous="NORMAL")
    db.open()
    yield ImageStore(db, events)
    db.close()


async def test_create_then_get_returns_the_record(store: ImageStore, events: Events) -> None:
    created = await store.create(
        "default", Image(name="docker.io/library/a:1", target=_target(1), labels={"k": "v"})
    )
    got = await store.get("default", "docker.io/library/a:1")
    assert got == created
    assert got.target == _target(1)
    assert got.created_at is not None and got.created_at == got.updated_at
    assert events.seen == [
        ("default", "/images/create", ImageCreate(name="docker.io/library/a:1", labels={"k": "v"}))
    ]


async def test_create_twice_is_already_exists(store: ImageStore) -> None:
    await store.create("default", Image(name="a", target=_target(1)))
    with pytest.raises(AlreadyExists, match="image 'a' already exists"):
        await store.create("default", Image(name="a", target=_target(2)))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (Image(name="", target=_target(1)), "image name"),
        (Image(name="a b", target=_target(1)), "without whitespace"),
        (
            Image(name="a", target=Descriptor(mediaType=MANIFEST, digest="sha256:zz", size=1)),
            "invalid digest",
        ),
        (
            Image(name="a", target=msgspec.structs.replace(_target(1), size=0)),
            "size must be positive",
        ),
        (
            Image(name="a", target=msgspec.structs.replace(_target(1), mediaType="")),
            "media type must be set",
        ),
    ],
)
async def test_create_validates_like_containerd(
    store: ImageStore, image: Image, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await store.create("default", image)


async def test_namespaces_are_separate(store: ImageStore) -> None:
    await store.create("one", Image(name="a", target=_target(1)))
    with pytest.raises(NotFound, match="image 'a' not found"):
        await store.get("two", "a")
    assert await store.list("two") == []


async def test_list_filters_on_name_target_and_labels(store: ImageStore) -> None:
    await store.create("default", Image(name="x/a:1", target=_target(1), labels={"team": "ci"}))
    await store.create("default", Image(name="x/b:1", target=_target(2, INDEX, note="n")))
    await store.create("default", Image(name="y/c:1", target=_target(3)))

    async def names(*filters: str) -> list[str]:
        return [i.name for i in await store.list("default", filters)]

    assert await names() == ["x/a:1", "x/b:1", "y/c:1"]
    assert await names("name~=^x/") == ["x/a:1", "x/b:1"]
    assert await names(f"target.digest=={_target(3).digest}") == ["y/c:1"]
    assert await names(f"target.mediatype=={INDEX}") == ["x/b:1"]
    assert await names("labels.team==ci") == ["x/a:1"]
    assert await names("annotations.note") == ["x/b:1"]
    assert await names("labels.team==ci", "name==y/c:1") == ["x/a:1", "y/c:1"]


async def test_update_without_fieldpaths_replaces_labels_and_target(store: ImageStore) -> None:
    await store.create("default", Image(name="a", target=_target(1), labels={"old": "1"}))
    updated = await store.update("default", Image(name="a", target=_target(2), labels={"new": "2"}))
    assert updated.target == _target(2)
    assert updated.labels == {"new": "2"}


async def test_update_label_fieldpaths_set_and_remove_single_keys(
    store: ImageStore, events: Events
) -> None:
    await store.create("default", Image(name="a", target=_target(1), labels={"a": "1", "b": "2"}))
    updated = await store.update(
        "default",
        Image(name="a", target=_target(9), labels={"a": "", "c": "3"}),
        ["labels.a", "labels.c"],
    )
    assert updated.labels == {"b": "2", "c": "3"}
    assert updated.target == _target(1), "target not in the fieldpaths: unchanged"
    assert events.seen[-1] == (
        "default",
        "/images/update",
        ImageUpdate(name="a", labels={"b": "2", "c": "3"}),
    )


async def test_update_annotation_fieldpaths_change_the_target_annotations(
    store: ImageStore,
) -> None:
    await store.create("default", Image(name="a", target=_target(1, keep="k", drop="d")))
    updated = await store.update(
        "default",
        Image(name="a", target=_target(1, add="x")),
        ["annotations.add", "annotations.drop"],
    )
    assert updated.target.annotations == {"keep": "k", "add": "x"}


async def test_update_refuses_unknown_fieldpaths(store: ImageStore) -> None:
    await store.create("default", Image(name="a", target=_target(1)))
    with pytest.raises(InvalidArgument, match="cannot update 'name'"):
        await store.update("default", Image(name="a", target=_target(1)), ["name"])


async def test_update_of_a_missing_image_is_not_found(store: ImageStore) -> None:
    with pytest.raises(NotFound):
        await store.update("default", Image(name="nope", target=_target(1)), ["labels"])


async def test_delete_removes_and_publishes(store: ImageStore, events: Events) -> None:
    await store.create("default", Image(name="a", target=_target(1)))
    await store.delete("default", "a")
    with pytest.raises(NotFound):
        await store.get("default", "a")
    assert events.seen[-1] == ("default", "/images/delete", ImageDelete(name="a"))
    with pytest.raises(NotFound):
        await store.delete("default", "a")


async def test_delete_with_target_only_if_it_still_matches(store: ImageStore) -> None:
    await store.create("default", Image(name="a", target=_target(1)))
    with pytest.raises(FailedPrecondition, match="no longer points at"):
        await store.delete("default", "a", target=_target(2).digest)
    await store.delete("default", "a", target=_target(1).digest)


async def test_set_labels_keeps_other_labels(store: ImageStore) -> None:
    await store.create("default", Image(name="a", target=_target(1), labels={"mine": "x"}))
    image = await store.set_labels("default", "a", {"moorage/snapshotter.overlayfs": "sha256:c"})
    assert image.labels == {"mine": "x", "moorage/snapshotter.overlayfs": "sha256:c"}
