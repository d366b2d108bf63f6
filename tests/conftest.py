import os
import shutil
from pathlib import Path

import pytest

DATA = Path(
    os.environ.get(
        "HARRISON_KNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder beside the project (or $HARRISON_KNN_DATA)."""
    if not (DATA / "flickr8k-1k" / "data_list.txt").is_file():
        raise FileNotFoundError(
            f"the shared data folder was not found at {DATA}; set HARRISON_KNN_DATA"
        )
    return DATA


def copy_flickr_subset(shared_data: Path, target: Path, count: int) -> Path:
    """A HARRISON-layout folder with the first ``count`` flickr8k-1k photos."""
    source = shared_data / "flickr8k-1k"
    paths = (source / "data_list.txt").read_text().splitlines()[:count]
    tags = (source / "tag_list.txt").read_text().splitlines()[:count]
    target.mkdir(parents=True)
    for path in paths:
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / path, target / path)
    (target / "data_list.txt").write_text("\n".join(paths) + "\n")
    (target / "tag_list.txt").write_text("\n".join(tags) + "\n")
    shutil.copyfile(source / "vocab_index.txt", target / "vocab_index.txt")
    return target


@pytest.fixture(scope="session")
def flickr30(shared_data, tmp_path_factory) -> Path:
    """30 real flickr photos in HARRISON layout, in a temporary folder."""
    return copy_flickr_subset(
        shared_data, tmp_path_factory.mktemp("flickr") / "data", 30
    )
