"""Workers for examples/map: list -> resize (one task per photo) -> publish.

Run with:  dagnats worker examples/map/worker.py
"""

import time

import msgspec

from dagnats.infra.worker import TaskContext, Worker

w = Worker()


class Album(msgspec.Struct):
    album: str
    photos: int


@w.task("map-list")
def list_photos(ctx: TaskContext, album: Album) -> list[str]:
    # The map step runs one task per element of this array.
    return [f"{album.album}/photo-{n}.jpg" for n in range(1, album.photos + 1)]


@w.task("map-resize")
def resize(ctx: TaskContext, photo: str) -> str:
    # ctx.instance is the element's index; each element is retried on its own.
    if photo.endswith("-3.jpg") and ctx.attempt == 1:
        raise ConnectionError(f"storage hiccup on {photo}")
    if "broken" in photo:
        raise ValueError(f"cannot decode {photo}")
    time.sleep(1)
    return f"{photo} -> thumbs/{ctx.instance}.jpg"


@w.task("map-publish")
def publish(ctx: TaskContext, thumbs: list[str]) -> str:
    # The map's output: the outputs of every element, in the input's order.
    return f"published {len(thumbs)} thumbnails, first {thumbs[0]}"


if __name__ == "__main__":
    w.run()
