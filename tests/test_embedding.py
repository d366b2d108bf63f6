import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from harrison_knn.embedding import EmbeddingStore, embed_photos


class ColourEncoder:
    """A tiny stand-in encoder: the mean colour of a photo, as a unit vector."""

    name = "colour"
    width = 3
    device = torch.device("cpu")

    def preprocess(self, image):
        pixels = np.asarray(image.resize((4, 4)), dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()

    def encode_batch(self, batch):
        means = batch.mean(dim=(2, 3)).numpy() + 1e-3
        return (means / np.linalg.norm(means, axis=1, keepdims=True)).astype(np.float32)


COLOURS = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 10), (10, 200, 200)]


@pytest.fixture
def photos(tmp_path):
    paths = []
    for i, colour in enumerate(COLOURS):
        path = tmp_path / f"photo{i}.png"
        Image.new("RGB", (16, 12), colour).save(path)
        paths.append(path)
    return paths


def test_embeds_in_the_given_order(photos):
    result = embed_photos(photos, ColourEncoder(), batch_size=2, num_workers=0)

    assert result.ok.tolist() == [True] * 5
    assert result.vectors.shape == (5, 3)
    assert result.vectors.dtype == np.float32
    assert np.argmax(result.vectors[0]) == 0
    assert np.argmax(result.vectors[2]) == 2
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, rtol=1e-6)


def test_worker_processes_give_the_same_embeddings(photos):
    alone = embed_photos(photos, ColourEncoder(), batch_size=2, num_workers=0)
    workers = embed_photos(photos * 20, ColourEncoder(), batch_size=4, num_workers=2)

    np.testing.assert_array_equal(workers.vectors[:5], alone.vectors)
    np.testing.assert_array_equal(workers.vectors[95:], alone.vectors)


def test_unreadable_photo_is_skipped_with_its_reason(photos, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a photo")

    result = embed_photos(
        [photos[0], broken, photos[1]], ColourEncoder(), num_workers=0
    )

    assert result.ok.tolist() == [True, False, True]
    assert list(result.failures) == [str(broken)]
    assert result.vectors[1].tolist() == [0.0, 0.0, 0.0]


def test_store_resumes_with_the_photos_not_yet_done(photos, tmp_path):
    store = EmbeddingStore(tmp_path / "store", encoder="colour", width=3)
    keys = [p.name for p in photos]
    embed_photos(photos[:2], ColourEncoder(), keys=keys[:2], store=store, num_workers=0)
    seen = []

    result = embed_photos(
        photos,
        ColourEncoder(),
        keys=keys,
        store=EmbeddingStore(tmp_path / "store", encoder="colour", width=3),
        batch_size=1,
        chunk_size=2,
        num_workers=0,
        on_progress=lambda done, total: seen.append(done),
    )

    assert seen[0] == 2
    assert seen[-1] == 5
    # One chunk from the first run, then chunks of two and one photo.
    assert len(list((tmp_path / "store").glob("chunk-*.npz"))) == 3
    full = embed_photos(photos, ColourEncoder(), num_workers=0)
    np.testing.assert_array_equal(result.vectors, full.vectors)


def test_store_of_another_encoder_is_refused(tmp_path):
    EmbeddingStore(tmp_path, encoder="colour", width=3)

    with pytest.raises(ValueError, match="made by 'colour' .* not by 'clip:x' "):
        EmbeddingStore(tmp_path, encoder="clip:x", width=512)


def test_store_folder_name_is_safe_and_distinct():
    first = EmbeddingStore.folder_name("clip:ViT-B-32//home/me/ckpt.pt")
    second = EmbeddingStore.folder_name("clip:ViT-B-32//home/you/ckpt.pt")

    assert first.startswith("clip_ViT-B-32_home_me_ckpt.pt-")
    assert "/" not in first
    assert first != second


def test_decoding_in_this_process_uses_one_torch_thread(photos):
    seen = []

    class ThreadRecordingEncoder(ColourEncoder):
        def preprocess(self, image):
            seen.append(torch.get_num_threads())
            return super().preprocess(image)

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = embed_photos(
            photos, ThreadRecordingEncoder(), batch_size=2, num_workers=0
        )
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)

    assert seen == [1] * 5
    assert after == 2
    assert result.ok.all()


def test_default_workers_leave_a_core_to_the_encoder(monkeypatch):
    from harrison_knn.embedding import default_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(32)))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)

    assert default_workers("cpu") == 4
    assert default_workers("cuda") == 16
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0, 1})
    assert default_workers("cpu") == 1
    assert default_workers("cuda") == 1


class Tripwire:
    """Creates a folder when unpickled: proof that a loader ran pickled code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_chunk_holding_a_pickled_object_is_ignored_not_unpickled(tmp_path, caplog):
    store = EmbeddingStore(tmp_path / "store", encoder="colour", width=3)
    store.add(["a.jpg"], np.array([[1.0, 0.0, 0.0]], dtype=np.float32))
    marker = tmp_path / "unpickled"
    np.savez(
        tmp_path / "store" / "chunk-000001.npz",
        keys=np.array([Tripwire(marker)], dtype=object),
        vectors=np.array([[0.0, 1.0, 0.0]], dtype=np.float32),
    )

    reopened = EmbeddingStore(tmp_path / "store", encoder="colour", width=3)
    with caplog.at_level(logging.WARNING, logger="harrison_knn"):
        vectors, found = reopened.get(["a.jpg", "b.jpg"])

    assert found.tolist() == [True, False]
    assert vectors[0].tolist() == [1.0, 0.0, 0.0]
    assert not marker.exists()
    assert any(
        "ignoring unreadable chunk" in message
        and "chunk-000001.npz" in message
        and "Object arrays cannot be loaded" in message
        for message in caplog.messages
    )


def test_decoding_workers_run_at_a_lower_priority(photos):
    class NicenessEncoder(ColourEncoder):
        """Embeds the CPU niceness of the process that preprocessed a photo."""

        width = 1

        def preprocess(self, image):
            return torch.full((3, 2, 2), float(os.nice(0)))

        def encode_batch(self, batch):
            return batch[:, :1, 0, 0].numpy().astype(np.float32)

    here = os.nice(0)
    in_workers = embed_photos(
        photos * 4, NicenessEncoder(), batch_size=2, num_workers=2
    )
    in_this_process = embed_photos(
        photos, NicenessEncoder(), batch_size=2, num_workers=0
    )

    assert set(in_workers.vectors[:, 0]) == {min(here + 10, 19)}
    assert set(in_this_process.vectors[:, 0]) == {here}
