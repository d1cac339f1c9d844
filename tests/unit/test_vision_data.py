"""Images in training data (issue #18, the data side): every layout read into the normalised form, every bad image
refused with its row, field and path, the pixel budget, validate-data's image report.

The files are real and small: tests/data/vision/ holds a few images (PNG, JPEG, WebP, an animated GIF, a truncated
PNG, an SVG) and data files in OpenAI's, LLaMA-Factory's, ShareGPT's and TRL's layouts.
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import tunekit as tk
from tunekit.cli import main as cli_main
from tunekit.cli.validate_data import validate_data
from tunekit.data import load_rows, normalise
from tunekit.data.cache import cache_key
from tunekit.data.formats import Example
from tunekit.data.images import ImageOptions, image_stats, load_image
from tunekit.data.loading import base_dir_of
from tunekit.data.summary import summarise_data
from tunekit.training_data import normalise_for

DATA = Path(__file__).resolve().parents[1] / "data" / "vision"
IMAGES = DATA / "images"
IMG = {"type": "image"}


def text(t: str) -> dict[str, str]:
    return {"type": "text", "text": t}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def bot(content: str) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def read(name: str, **options: Any) -> Any:
    """A file of tests/data/vision, normalised as fit reads it (relative paths from the file's folder)."""
    path = DATA / name
    return normalise(load_rows(path), images=ImageOptions(base_dir=base_dir_of(path), **options))


def one(row: dict[str, Any], **options: Any) -> Example:
    """One row given in Python (relative paths from tests/data/vision, as if it were the current directory)."""
    return normalise([row], images=ImageOptions(base_dir=DATA, **options)).examples[0]


def sizes(ex: Example) -> list[tuple[int, int]]:
    return [image.size for image in ex.images]


def colours(ex: Example) -> list[tuple[int, ...]]:
    """Each image's top-left pixel, JPEG's few levels of error rounded off."""
    return [tuple(255 if c > 250 else 0 if c < 5 else c for c in image.getpixel((0, 0))) for image in ex.images]


def png(size: tuple[int, int] = (4, 4), colour: Any = "yellow", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


# --- the layouts, read into the normalised form -------------------------------------------------------------------


def test_openai_parts_file_reads_into_the_normalised_form() -> None:
    """image / image_url (a path, a data URL) / input_image parts, text parts merged, a text-only row as before."""
    norm = read("openai_parts.jsonl")
    assert norm.format == "messages" and norm.skipped == []
    first, second, data_url, two, plain = norm.examples
    assert first.messages == (user([IMG, text("What colour is this?")]), bot("red"))
    assert second.messages == (user([text("And this one?"), IMG]), bot("green"))  # 'detail' is an API setting
    assert data_url.messages == (user([IMG, text("Name the colour.")]), bot("yellow"))
    assert two.messages == (user([text("Compare "), IMG, text(" and "), IMG]), bot("red, then blue"))
    assert plain == Example(row=5, messages=(user("No image here."), bot("Fine.")))  # no images, content a string
    assert [sizes(ex) for ex in norm.examples] == [[(16, 16)], [(24, 16)], [(4, 4)], [(16, 16), (16, 24)], []]
    assert colours(first) == [RED] and colours(data_url) == [YELLOW] and colours(two) == [RED, BLUE]
    assert all(image.mode == "RGB" for ex in norm.examples for image in ex.images)


def test_llama_factory_file_places_images_at_their_markers_in_order() -> None:
    """``<image>`` markers across a multi-turn conversation take the ``images`` column in order; a row with an empty
    list keeps its text."""
    first, second, plain = read("llamafactory.json").examples
    assert first.messages == (
        user([IMG, text("Who is this colour?")]),
        bot("red"),
        user([text("And "), IMG, text("?")]),
        bot("green"),
    )
    assert colours(first) == [RED, GREEN] and sizes(first) == [(16, 16), (24, 16)]
    assert second.messages == (user([IMG, text("\nWhat colour?")]), bot("blue"))  # the text kept as written
    assert colours(second) == [BLUE]
    assert plain.messages == (user("A text-only turn."), bot("ok")) and plain.images == ()


def test_sharegpt_file_with_a_system_column() -> None:
    norm = read("sharegpt.json")
    assert norm.format == "sharegpt"
    first, second = norm.examples
    assert first.messages == (
        {"role": "system", "content": "Answer with one word."},
        user([IMG, text("What colour?")]),
        bot("red"),
    )
    assert second.messages == (user([text("Compare "), IMG, text(" with "), IMG, text(".")]), bot("green, blue"))
    assert colours(second) == [GREEN, BLUE]


def test_preference_file_holds_the_images_in_the_prompt() -> None:
    """LLaMA-Factory's DPO layout (conversations + chosen / rejected objects + images)."""
    norm = read("sharegpt_dpo.json")
    assert norm.format == "preference"
    first = norm.examples[0]
    assert first.prompt == (user([IMG, text("What colour is it?")]),)
    assert first.chosen == (bot("red"),) and first.rejected == (bot("blue"),)
    assert colours(first) == [RED] and colours(norm.examples[1]) == [GREEN]


def test_trl_prompt_completion_file_fills_empty_image_parts_from_the_images_column() -> None:
    norm = read("trl_prompt_completion.jsonl")
    assert norm.format == "prompt_completion"
    assert norm.examples[0].messages == (user([IMG, text("What colour?")]), bot("red"))
    assert [colours(ex) for ex in norm.examples] == [[RED], [BLUE]]


def test_trl_images_column_of_pil_images_bytes_and_datasets_objects() -> None:
    """The images column as ``datasets`` hands it over: PIL images, the ``{"bytes", "path"}`` objects of an Image
    feature, raw bytes; and TRL's one-image ``image`` column."""
    pil = Image.new("RGB", (10, 6), RED)
    stored = {"bytes": png(colour=GREEN), "path": "green.png"}  # bytes win over the path, as datasets decodes them
    by_path = {"bytes": None, "path": str(IMAGES / "blue.webp")}
    row = {
        "messages": [user([IMG, IMG, IMG, IMG, text("Name the colours.")]), bot("red green blue yellow")],
        "images": [pil, stored, by_path, png(colour=YELLOW)],
    }
    ex = one(row)
    assert ex.messages[0]["content"] == [IMG, IMG, IMG, IMG, text("Name the colours.")]
    assert colours(ex) == [RED, GREEN, BLUE, YELLOW] and sizes(ex)[0] == (10, 6)
    single = one({"prompt": [user([IMG, text("Colour?")])], "completion": "red", "image": pil})
    assert colours(single) == [RED]


def test_a_datasets_dataset_and_its_parquet_file(tmp_path) -> None:
    """TRL's layout as ``datasets`` stores it: an Image feature (``{"bytes", "path"}`` cells) and content parts whose
    keys Arrow merged (an image part with ``"text": None``)."""
    from datasets import Dataset

    chat = [user([IMG, text("Colour?")]), {"role": "assistant", "content": [text("red")]}]
    ds = Dataset.from_dict({"messages": [chat], "images": [[Image.new("RGB", (10, 6), RED)]]})
    assert ds.to_list()[0]["messages"][0]["content"][0] == {"type": "image", "text": None}
    path = tmp_path / "colours.parquet"
    ds.to_parquet(str(path))
    for data in (ds, str(path)):
        norm, _ = normalise_for(data, training=tk.Training(), method=tk.LoRA(), objective=None)
        (ex,) = norm.examples
        assert ex.messages == (user([IMG, text("Colour?")]), bot("red")) and colours(ex) == [RED]
        assert sizes(ex) == [(10, 6)]


def test_prompt_completion_string_and_alpaca_rows_with_markers() -> None:
    pc = one({"prompt": "<image>Colour?", "completion": "red", "images": ["images/red.png"]})
    assert pc.messages == (user([IMG, text("Colour?")]), bot("red"))
    alpaca = one({"instruction": "Name the colour of <image>.", "output": "blue", "images": ["images/blue.webp"]})
    assert alpaca.messages == (user([text("Name the colour of "), IMG, text(".")]), bot("blue"))


def test_kto_and_rl_prompt_rows_with_images() -> None:
    kto = normalise(
        [{"messages": [user("<image>Colour?"), bot("red")], "label": True, "images": ["images/red.png"]}],
        images=ImageOptions(base_dir=DATA),
    ).examples[0]
    assert kto.prompt == (user([IMG, text("Colour?")]),) and kto.completion == (bot("red"),) and kto.label is True
    rl = normalise(
        [{"prompt": "<image>Colour?", "images": ["images/red.png"], "answer": "red"}],
        images=ImageOptions(base_dir=DATA),
    ).examples[0]
    assert rl.prompt == (user([IMG, text("Colour?")]),) and colours(rl) == [RED]
    assert rl.columns == {"answer": "red"}  # the images are read, not handed to the reward functions


def test_preference_row_with_openai_parts_in_the_prompt() -> None:
    ex = one({"prompt": [user([{"type": "image", "image": "images/red.png"}, text("Colour?")])], "chosen": "red",
              "rejected": "blue"})  # fmt: skip
    assert ex.prompt == (user([IMG, text("Colour?")]),) and colours(ex) == [RED]
    openai = one({"input": {"messages": [user([{"type": "image_url", "image_url": {"url": "images/red.png"}},
                                               text("Colour?")])]},
                  "preferred_output": [bot("red")], "non_preferred_output": [bot("blue")]})  # fmt: skip
    assert openai.prompt == ex.prompt and openai.chosen == (bot("red"),) and colours(openai) == [RED]


def test_mixed_inline_images_and_column_images_keep_the_conversation_order() -> None:
    row = {
        "messages": [user([{"type": "image", "image": "images/green.jpg"}, text("then <image>")]), bot("green, red")],
        "images": ["images/red.png"],
    }
    ex = one(row)
    assert ex.messages[0]["content"] == [IMG, text("then "), IMG] and colours(ex) == [GREEN, RED]


def test_text_only_data_is_unchanged() -> None:
    """No image column: ``<image>`` is text, rows read exactly as before; a table's empty images cell likewise."""
    literal = {"messages": [user("What does <image> mean in HTML?"), bot("Nothing: it is <img>.")]}
    assert one(literal) == Example(row=1, messages=(user("What does <image> mean in HTML?"),
                                                    bot("Nothing: it is <img>.")))  # fmt: skip
    table = [{"prompt": "2+2=", "completion": "4", "images": None}, {"prompt": "3+3=", "completion": "6", "images": []}]
    plain = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": "6"}]
    assert normalise(table).examples == normalise(plain).examples


def test_relative_paths_start_from_the_data_files_folder(tmp_path, monkeypatch) -> None:
    """fit's path (normalise_for): a file's relative image paths from its folder, wherever the script runs; rows
    given in Python from the current directory."""
    monkeypatch.chdir(tmp_path)
    norm, objective = normalise_for(str(DATA / "llamafactory.json"), training=tk.Training(), method=tk.LoRA(),
                                    objective=None)  # fmt: skip
    assert objective.name == "SFT" and colours(norm.examples[0]) == [RED, GREEN]
    rows = [{"messages": [user("<image>Colour?"), bot("red")], "images": ["images/red.png"]}]
    with pytest.raises(tk.DatasetError, match=r"file not found .*a relative path starts from the current directory"):
        normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=None)
    monkeypatch.chdir(DATA)
    norm, _ = normalise_for(rows, training=tk.Training(), method=tk.LoRA(), objective=None)
    assert colours(norm.examples[0]) == [RED]
    mapped = tk.Data(str(DATA / "llamafactory.json"), columns={"images": "images"})
    assert base_dir_of(mapped) == DATA


def test_a_data_column_renamed_to_images(tmp_path) -> None:
    path = tmp_path / "pictures.jsonl"
    row = {"messages": [user("<image>Colour?"), bot("red")], "pictures": [str(IMAGES / "red.png")]}
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    norm, _ = normalise_for(tk.Data(str(path), columns={"images": "pictures"}), training=tk.Training(),
                            method=tk.LoRA(), objective=None)  # fmt: skip
    assert colours(norm.examples[0]) == [RED]


# --- image sources ------------------------------------------------------------------------------------------------


def test_file_urls_and_data_urls() -> None:
    url = (IMAGES / "red.png").as_uri()
    assert colours(one({"messages": [user("<image>?"), bot("red")], "images": [url]})) == [RED]
    data_url = "data:image/jpeg;base64," + base64.b64encode(png(colour=BLUE, fmt="JPEG")).decode()
    ex = one({"messages": [user([{"type": "image_url", "image_url": {"url": data_url}}]), bot("blue")]})
    assert ex.images[0].size == (4, 4)


def test_transparent_image_composited_onto_white() -> None:
    """As transformers' convert_to_rgb does: a transparent pixel is white, not black."""
    ex = one({"messages": [user("<image>?"), bot("white")], "images": ["images/clear.png"]})
    assert ex.images[0].mode == "RGB" and colours(ex) == [(255, 255, 255)]


def test_exif_orientation_is_applied(tmp_path) -> None:
    """A phone photo stored sideways with an EXIF orientation is read the way it is shown."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to show
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (20, 10), RED).save(path, exif=exif)
    assert load_image(str(path), where="row 1").size == (10, 20)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # no access log on stderr
        pass


def test_http_urls_are_fetched_and_a_failed_fetch_names_the_url() -> None:
    """A local server stands in for the web (the tests use no network)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(IMAGES)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        row = {"messages": [user([{"type": "image_url", "image_url": {"url": f"{base}/green.jpg"}}]), bot("green")]}
        assert sizes(one(row)) == [(24, 16)]
        missing = {"messages": [user("<image>?"), bot("x")], "images": [f"{base}/nothing.png"]}
        with pytest.raises(tk.DatasetError, match=r"row 1, field 'images', image 1: could not fetch .*/nothing.png"):
            one(missing)
    finally:
        server.shutdown()
        server.server_close()
    with socket.socket() as s:  # a port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(tk.DatasetError, match=r"could not fetch 'http://127.0.0.1:\d+/red.png' \(.*\); check the URL"):
        one({"messages": [user("<image>?"), bot("x")], "images": [f"http://127.0.0.1:{closed}/red.png"]})


# --- bad input: every one a DatasetError naming the row, the field and the image -------------------------------


def _bad(images: Any, content: Any = "<image>What colour?", **extra: Any) -> dict[str, Any]:
    return {"messages": [user(content), bot("red")], "images": images, **extra}


BAD = [
    ("missing-file", _bad(["images/missing.png"]),
     r"row 1, field 'images', image 1: image 'images/missing.png': file not found \(.*missing.png\); a relative path "
     r"starts from the data file's folder"),
    ("corrupt-file", _bad(["images/corrupt.png"]),
     r"row 1, field 'images', image 1: '.*corrupt.png' is corrupt or truncated: PIL could not decode it"),
    ("corrupt-bytes", _bad([b"\x89PNG\r\n\x1a\n not really a png"]),
     r"row 1, field 'images', image 1: 25 bytes is not an image PIL can read \(unsupported or unrecognised format\)"),
    ("unsupported-format", _bad(["images/drawing.svg"]),
     r"'.*drawing.svg' is not an image PIL can read .*convert it to PNG, JPEG, WebP"),
    ("animated", _bad(["images/blink.gif"]), r"'.*blink.gif' is an animated image \(2 frames\); give one frame"),
    ("directory", _bad(["images"]), r"image 'images': is a directory, not an image file"),
    ("not-an-image-value", _bad([7]), r"row 1, field 'images', image 1: expected an image \(a path, .*got int"),
    ("other-url-scheme", _bad(["ftp://example.org/a.png"]), r"the URL scheme 'ftp' cannot be read"),
    ("bad-data-url", _bad(["data:image/png;base64,@@@"]), r"the data URL's base64 is invalid"),
    ("not-an-image-data-url", _bad(["data:text/plain;base64,aGk="]), r"is not a base64 image data URL"),
    ("fewer-images-than-markers", _bad(["images/red.png"], "<image> and <image>?"),
     r"row 1, field 'images': 1 image listed but 2 places for images in the conversation \('<image>' in the text, "
     r"or \{'type': 'image'\} parts\)"),
    ("more-images-than-markers", _bad(["images/red.png", "images/blue.webp"]),
     r"row 1, field 'images': 2 images listed but 1 place for images"),
    ("images-but-no-marker", _bad(["images/red.png"], "What colour?"), r"1 image listed but 0 places"),
    ("marker-but-empty-list", _bad([]), r"0 images listed but 1 place"),
    ("empty-image-part-no-column", {"messages": [user([IMG, text("?")]), bot("red")]},
     r"row 1, field 'messages', message 1: an image part with no image .*list the row's images in an 'images' column"),
    ("image-part-in-assistant", {"messages": [user("hi"), {"role": "assistant", "content": [
        {"type": "image", "image": "images/red.png"}]}]},
     r"row 1, field 'messages', message 2: an image in the assistant.s message; images go in user turns"),
    ("marker-in-assistant", {"messages": [user("<image>hi"), bot("see <image>")], "images": ["a.png", "b.png"]},
     r"row 1, field 'messages', message 2: '<image>' in the assistant's message; images go in user turns"),
    ("image-in-chosen", {"prompt": "<image>Colour?", "chosen": [{"role": "assistant", "content": "red"},
                         user("<image>and?"), bot("red")], "rejected": "blue", "images": ["images/red.png"] * 2},
     r"row 1, field 'chosen', message 2: an image in the answer; a preference pair's images go in the prompt"),
    ("image-and-images-columns", _bad(["images/red.png"], image="images/red.png"),
     r"row 1: both an 'images' and an 'image' column; keep one"),
    ("image-column-with-a-list", {"messages": [user("<image><image>"), bot("x")], "image": ["a.png", "b.png"]},
     r"row 1, field 'image': a list of 2 images; the 'image' column holds one image"),
    ("unknown-part-key", {"messages": [user([{"type": "image", "image": "images/red.png", "alt": "red"}]),
                                       bot("red")]},
     r"message 1: unknown key 'alt' in an 'image' part"),
    ("image-url-without-url", {"messages": [user([{"type": "image_url", "image_url": {}}]), bot("red")]},
     r"an 'image_url' part needs the image's URL"),
    ("two-sources-in-a-part", {"messages": [user([{"type": "image", "image": "a.png", "path": "b.png"}]),
                                            bot("red")]},
     r"an image part with both \['image', 'path'\]; keep one"),
    ("video-part", {"messages": [user([{"type": "video", "video": "clip.mp4"}]), bot("a clip")]},
     r"a content part of type 'video': audio and video data is not supported .*remove the part"),
    ("video-column", {"messages": [user("hi"), bot("x")], "videos": ["clip.mp4"]},
     r"row 1, column 'videos': audio and video data is not supported"),
]  # fmt: skip


@pytest.mark.parametrize(("row", "pattern"), [pytest.param(r, p, id=name) for name, r, p in BAD])
def test_bad_image_rows_are_dataset_errors_naming_row_and_field(row: dict[str, Any], pattern: str) -> None:
    with pytest.raises(tk.DatasetError, match=pattern) as info:
        one(row)
    assert info.value.row == 1


def test_text_rows_cannot_carry_images() -> None:
    with pytest.raises(tk.DatasetError, match=r"row 1, column 'images': 'text' rows \(raw text\) cannot carry images"):
        normalise([{"text": "a red square", "images": ["images/red.png"]}])


def test_on_bad_rows_skip_leaves_bad_image_rows_out_with_their_reasons() -> None:
    norm = normalise(load_rows(DATA / "bad_images.jsonl"), on_bad_rows="skip", images=ImageOptions(base_dir=DATA))
    assert [ex.row for ex in norm.examples] == [1, 6]
    reasons = dict(norm.skipped)
    assert sorted(reasons) == [2, 3, 4, 5]
    assert "file not found" in reasons[2] and "missing.png" in reasons[2]
    assert "corrupt or truncated" in reasons[3] and "unsupported or unrecognised format" in reasons[4]
    assert "1 image listed but 2 places" in reasons[5]


def test_missing_pillow_names_the_vision_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now raises ImportError
    with pytest.raises(tk.MissingDependencyError, match=r'needs pillow .*pip install "tunekit\[vision\]"'):
        one(_bad(["images/red.png"]))
    assert normalise([{"prompt": "2+2=", "completion": "4"}]).examples  # text rows never import it


# --- the pixel budget ---------------------------------------------------------------------------------------------


def test_max_pixels_downscales_keeping_the_aspect_ratio_or_refuses() -> None:
    row = _bad(["images/wide.png"])
    (image,) = one(row, max_pixels=6000).images  # 300x200 = 60,000 pixels
    assert image.size == (94, 63) and 94 * 63 <= 6000
    assert one(row, max_pixels=60_000).images[0].size == (300, 200)  # at the budget: untouched
    with pytest.raises(tk.DatasetError) as info:
        one(row, max_pixels=6000, resize=False)
    assert str(info.value) == (
        "row 1, field 'images', image 1: the image is 300x200 = 60,000 pixels, over max_pixels=6,000 "
        "(Training(max_pixels=6000, min_pixels=None, resize_images=False)); shrink the image, raise max_pixels, or "
        "set resize_images=True to downscale it"
    )
    assert (info.value.row, info.value.field) == (1, "images")


def test_min_pixels_upscales_or_refuses() -> None:
    row = _bad(["images/red.png"])  # 16x16
    assert one(row, min_pixels=1024).images[0].size == (32, 32)
    with pytest.raises(tk.DatasetError, match=r"image 1: the image is 16x16 = 256 pixels, under min_pixels=1,024"):
        one(row, min_pixels=1024, resize=False)


def test_decompression_bomb_limit(monkeypatch) -> None:
    """Over PIL's limit is refused with no budget; with max_pixels the image is downscaled (up to twice the limit,
    beyond which PIL refuses to open it at all)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # wide.png has 60,000
    row = _bad(["images/wide.png"])
    with pytest.raises(
        tk.DatasetError, match=r"image 1: '.*wide.png' is over PIL's decompression-bomb limit of 40,000 "
    ):
        one(row)
    assert one(row, max_pixels=6000).images[0].size == (94, 63)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    with pytest.raises(tk.DatasetError, match=r"decompression-bomb limit"):
        one(row, max_pixels=6000)
    with pytest.raises(tk.DatasetError, match=r"decompression-bomb limit"):  # an image given in memory, too
        one(_bad([Image.new("RGB", (300, 200))]))


def test_training_pixel_options_are_validated_and_reach_the_data() -> None:
    with pytest.raises(tk.ConfigError, match=r"min_pixels=100 is larger than max_pixels=10"):
        tk.Training(max_pixels=10, min_pixels=100)
    with pytest.raises(tk.ConfigError, match=r"max_pixels"):
        tk.Training(max_pixels=0)
    with pytest.raises(tk.ConfigError, match=r"did you mean 'max_pixels'"):
        tk.Training(image_max_pixels=100)
    path = str(DATA / "llamafactory.json")
    norm, _ = normalise_for(path, training=tk.Training(max_pixels=64), method=tk.LoRA(), objective=None)
    assert all(w * h <= 64 for ex in norm.examples for w, h in sizes(ex))
    with pytest.raises(tk.DatasetError, match=r"row 1, field 'images', image 1: .* over max_pixels=64"):
        normalise_for(path, training=tk.Training(max_pixels=64, resize_images=False), method=tk.LoRA(), objective=None)


# --- reports ------------------------------------------------------------------------------------------------------


def test_validate_data_reports_images_per_row_and_sizes() -> None:
    report = validate_data(DATA / "llamafactory.json")
    assert report["bad_rows"] == [] and report["valid_rows"] == 3
    assert report["images"] == {
        "rows_with_images": 2,
        "images": 3,
        "per_row": {"min": 0, "mean": 1.0, "max": 2},
        "smallest": "16x16",
        "largest": "24x16",
        "width": {"min": 16, "max": 24},
        "height": {"min": 16, "max": 24},
    }
    shrunk = validate_data(DATA / "openai_parts.jsonl", max_pixels=64)
    assert shrunk["images"]["largest"] in ("9x6", "6x9", "8x8") and shrunk["images"]["per_row"]["max"] == 2
    refused = validate_data(DATA / "openai_parts.jsonl", max_pixels=64, resize_images=False)
    assert [b["row"] for b in refused["bad_rows"]] == [1, 2, 4]  # the 4x4 data URL image fits
    assert "images" not in validate_data(DATA.parent / "canonical_chats.jsonl")  # text data: no image report


def test_validate_data_command_prints_the_images_and_the_bad_rows(capsys) -> None:
    assert cli_main(["validate-data", str(DATA / "bad_images.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "images     2 in 2 of 2 rows (per row min 1  mean 1.0  max 1); sizes 16x16 to 24x16" in out
    assert "row 2, field 'images', image 1: image 'images/missing.png': file not found" in out
    assert cli_main(["validate-data", str(DATA / "sharegpt.json"), "--json", "--max-pixels", "100"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"]["rows_with_images"] == 2 and report["images"]["largest"] in ("12x8", "8x12", "10x10")
    assert cli_main(["validate-data", str(DATA / "sharegpt.json"), "--min-pixels", "0"]) == 2  # a bad option
    assert "--min-pixels 0: must be at least 1" in capsys.readouterr().err


def test_run_summary_counts_images_and_text_summaries_are_unchanged() -> None:
    summary = summarise_data(read("sharegpt.json"))
    assert summary["train"]["images"]["images"] == 3 and summary["train"]["images"]["per_row"]["max"] == 2
    assert summary["prompts"][0][1] == user([IMG, text("What colour?")])  # JSON-ready: no image in it
    json.dumps(summary)
    kto = normalise([{"prompt": "<image>Colour?", "completion": "red", "label": True, "images": ["images/red.png"]}],
                    images=ImageOptions(base_dir=DATA))  # fmt: skip
    assert summarise_data(kto)["prompts"] == [[user([IMG, text("Colour?")])]]  # not the string with its marker
    text_only = summarise_data(normalise([{"prompt": "2+2=", "completion": "4"}]))
    assert text_only["train"] == {"rows": 1, "format": "prompt_completion", "skipped_rows": 0}


def test_image_stats_and_the_cache_key_see_the_pixels() -> None:
    assert image_stats([(), ()]) is None
    red = one(_bad(["images/red.png"]))
    blue = one(_bad(["images/blue.webp"]))
    assert red.messages == blue.messages
    assert cache_key(_NoTokenizer(), [red], {}) != cache_key(_NoTokenizer(), [blue], {})
    plain = Example(row=1, messages=(user("hi"), bot("x")))
    assert cache_key(_NoTokenizer(), [plain], {}) == cache_key(_NoTokenizer(), [plain], {})


class _NoTokenizer:
    def get_vocab(self) -> dict[str, int]:
        return {"a": 0}
