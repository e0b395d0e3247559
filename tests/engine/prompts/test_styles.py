"""Style files: loading, Fooocus's name and order rules, application, refusals, and Fooocus's
library fetched on first use from a local HTTP server (verified by SHA-256).

Fooocus's own files are never in this repository: the tests write small ones in the same JSON
shape (names in Fooocus's spelling, texts of our own).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from engine.config import EngineConfig
from engine.prompts.styles import (
    FOOOCUS_STYLE_FILES,
    STARTER_STYLE_FILES,
    StyleLibrary,
    load_styles,
    normalize_style_name,
)
from engine.types import EngineInputError, FeatureNotSupportedError
from tests.fileserver import FileServer, serve_files

SHIPPED = Path(__file__).resolve().parents[3] / "styles"

# Six small files in Fooocus's format. Fooocus's own file spells names like these; "Fooocus
# Sharp" also exists in our starter set (with another text), "SAI Anime" too.
FAKE_FOOOCUS: dict[str, list[dict[str, str]]] = {
    "sdxl_styles_fooocus.json": [
        {"name": "Fooocus Enhance", "negative_prompt": "fx-enhance-negative"},
        {
            "name": "Fooocus Sharp",
            "prompt": "fx-sharp {prompt} . crisp",
            "negative_prompt": "fx-sharp-negative",
        },
        {"name": "Fooocus Pony", "prompt": "score_9, {prompt}", "negative_prompt": ""},
    ],
    "sdxl_styles_sai.json": [
        {"name": "sai-3d-model", "prompt": "fx-3d {prompt}", "negative_prompt": "fx-3d-neg"},
        {"name": "sai-anime", "prompt": "fx-anime {prompt}", "negative_prompt": "fx-anime-neg"},
    ],
    "sdxl_styles_mre.json": [{"name": "mre-space-art", "prompt": "fx-space {prompt}"}],
    "sdxl_styles_twri.json": [
        {"name": "Ads Advertising", "prompt": "fx-ads {prompt}\nsecond line"},
    ],
    "sdxl_styles_diva.json": [{"name": "Artstyle Abstract", "prompt": "fx-abstract {prompt}"}],
    "sdxl_styles_marc_k3nt3l.json": [
        # a name that appeared in an earlier Fooocus file: the text is replaced, the place kept
        {"name": "Fooocus Pony", "prompt": "fx-pony-late {prompt}"},
        {"name": "Mk Chromolithography", "prompt": "fx-chromo {prompt}"},
    ],
}
FAKE_ORDER = [
    "Fooocus Enhance",
    "Fooocus Sharp",
    "Fooocus Pony",
    "SAI 3D Model",
    "SAI Anime",
    "MRE Space Art",
    "Ads Advertising",
    "Artstyle Abstract",
    "Mk Chromolithography",
]


def write_fooocus_files(folder: Path, names: tuple[str, ...] = FOOOCUS_STYLE_FILES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text(json.dumps(FAKE_FOOOCUS[name], indent=4), encoding="utf-8")


def copy_starter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in STARTER_STYLE_FILES:
        shutil.copyfile(SHIPPED / name, folder / name)
    return folder


@pytest.fixture
def library(tmp_path: Path) -> StyleLibrary:
    """The starter set alone (a copy: a checkout may hold Fooocus's files beside it)."""
    return StyleLibrary.from_folder(copy_starter(tmp_path / "styles"))


def test_shipped_styles_hold_the_fooocus_names(library: StyleLibrary) -> None:
    for name in (
        "Fooocus Enhance",
        "Fooocus Sharp",
        "Fooocus Masterpiece",
        "Fooocus Photograph",
        "Fooocus Negative",
        "Fooocus Cinematic",
        "SAI Anime",
        "SAI 3D Model",
    ):
        assert name in library.styles
    assert len(library.styles) >= 18
    assert library.names()[:2] == ["Fooocus V2", "Random Style"]
    for style in library.styles.values():
        assert style.prompt == "" or "{prompt}" in style.prompt


def test_the_repository_ships_none_of_fooocus_files() -> None:
    try:
        tracked = subprocess.run(
            ["git", "ls-files", "styles"], cwd=SHIPPED.parent, capture_output=True, text=True
        ).stdout.split()
    except OSError:
        pytest.skip("no git here")
    assert tracked
    assert not [path for path in tracked if Path(path).name in FOOOCUS_STYLE_FILES]


def test_names_are_normalised_like_fooocus() -> None:
    assert normalize_style_name("sai-3d-model") == "SAI 3D Model"
    assert normalize_style_name("mre-space-art") == "MRE Space Art"
    assert normalize_style_name("Fooocus Sharp") == "Fooocus Sharp"
    assert normalize_style_name("mk-(scientific)-illustration") == "Mk (Scientific) Illustration"


def test_styles_apply_in_order_with_the_placeholder_rule(library: StyleLibrary) -> None:
    rng = random.Random(0)
    pos, neg, applied = library.apply(["Fooocus Enhance", "Fooocus Sharp"], "a cat", "dog", rng)
    sharp = library.styles["Fooocus Sharp"]
    assert pos == [sharp.prompt.replace("{prompt}", "a cat")]
    assert neg == [library.styles["Fooocus Enhance"].negative_prompt, sharp.negative_prompt, "dog"]
    assert applied == ["Fooocus Enhance", "Fooocus Sharp"]
    # No template with {prompt}: the raw prompt goes first.
    pos, neg, _ = library.apply(["Fooocus Negative"], "a cat", "", rng)
    assert pos == ["a cat"]
    assert neg[-1] == ""
    assert library.apply([], "a cat", "dog", rng)[:2] == (["a cat"], ["dog"])


def test_random_style_is_drawn_from_the_image_rng(library: StyleLibrary) -> None:
    first = library.apply(["Random Style"], "x", "", random.Random(42))[2]
    again = library.apply(["Random Style"], "x", "", random.Random(42))[2]
    assert first == again
    assert first[0] in library.styles
    # Fooocus's draw: rng.choice over the styles in list order.
    assert first == [random.Random(42).choice(list(library.styles))]


def test_refusals_name_the_field(library: StyleLibrary) -> None:
    library.check(["Fooocus V2", "Fooocus Sharp"])  # the expansion is the engine's, not a style
    positive, _, applied = library.apply(["Fooocus V2"], "x", "", random.Random(1))
    assert (positive, applied) == (["x"], [])
    with pytest.raises(EngineInputError) as info2:
        library.check(["No Such Style"])
    assert info2.value.field == "style_selections"
    assert "No Such Style" in str(info2.value)
    assert not isinstance(info2.value, FeatureNotSupportedError)
    with pytest.raises(EngineInputError, match="needs styles"):
        StyleLibrary.from_folder(Path("/nonexistent")).check(["Random Style"])


def test_user_files_load_first_and_shipped_files_win(tmp_path: Path) -> None:
    copy_starter(tmp_path)
    (tmp_path / "mine.json").write_text(
        json.dumps(
            [
                {"name": "my-style", "prompt": "{prompt}, mine"},
                {"name": "Fooocus Sharp", "prompt": "overridden {prompt}"},
            ]
        )
    )
    styles = load_styles(tmp_path)
    assert list(styles)[:2] == ["My Style", "Fooocus Sharp"]  # user files come first
    assert styles["My Style"].prompt == "{prompt}, mine"
    assert styles["Fooocus Sharp"].prompt != "overridden {prompt}"
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        load_styles(tmp_path)


def test_fooocus_library_gives_fooocus_order_and_texts(tmp_path: Path) -> None:
    """All six files: exactly Fooocus's list (user files first), the starter set steps aside."""
    folder = copy_starter(tmp_path / "styles")
    write_fooocus_files(folder)
    (folder / "a_user.json").write_text(
        json.dumps([{"name": "fooocus-sharp", "prompt": "user {prompt}"}, {"name": "zz top"}])
    )
    library = StyleLibrary.from_folder(folder)
    assert library.names() == ["Fooocus V2", "Random Style", "Fooocus Sharp", "Zz Top"] + [
        n for n in FAKE_ORDER if n != "Fooocus Sharp"
    ]
    styles = library.styles
    assert styles["Fooocus Sharp"].prompt == "fx-sharp {prompt} . crisp"  # Fooocus's file wins
    assert styles["Fooocus Pony"].prompt == "fx-pony-late {prompt}"  # the later Fooocus file
    assert "Watercolor" not in styles  # a starter-only name: gone once the library is complete
    pos, neg, applied = library.apply(
        ["Fooocus Enhance", "Ads Advertising", "SAI 3D Model"], "a fox", "blurry", random.Random(0)
    )
    assert pos == ["fx-ads a fox", "second line", "fx-3d a fox"]
    assert neg == ["fx-enhance-negative", "fx-3d-neg", "blurry"]
    assert applied == ["Fooocus Enhance", "Ads Advertising", "SAI 3D Model"]


def test_starter_set_stands_in_while_the_library_is_incomplete(tmp_path: Path) -> None:
    folder = copy_starter(tmp_path / "styles")
    write_fooocus_files(folder, ("sdxl_styles_fooocus.json",))
    styles = load_styles(folder)
    assert list(styles)[:3] == ["Fooocus Enhance", "Fooocus Sharp", "Fooocus Pony"]
    assert styles["Fooocus Sharp"].prompt == "fx-sharp {prompt} . crisp"
    starter = [json.loads((SHIPPED / f).read_text()) for f in STARTER_STYLE_FILES]
    assert "Watercolor" in {entry["name"] for entries in starter for entry in entries}
    assert "Watercolor" in styles


def test_the_library_rereads_files_that_appear(tmp_path: Path) -> None:
    folder = copy_starter(tmp_path / "styles")
    library = StyleLibrary.from_folder(folder)
    with pytest.raises(EngineInputError):
        library.check(["Mk Chromolithography"])
    write_fooocus_files(folder)  # e.g. another process imported or fetched them
    library.check(["Mk Chromolithography"])


def served_library(tmp_path: Path) -> dict[str, bytes]:
    return {name: json.dumps(FAKE_FOOOCUS[name]).encode() for name in FOOOCUS_STYLE_FILES}


def style_config(
    tmp_path: Path, base_url: str, files: dict[str, bytes], *, allow: bool = True, bad: str = ""
) -> EngineConfig:
    downloads = {f"styles/{n}": f"{base_url}/{n}" for n in files}
    checksums = {
        f"styles/{n}": hashlib.sha256(b"tampered" if n == bad else body).hexdigest()
        for n, body in files.items()
    }
    return EngineConfig(
        models_dir=tmp_path / "models",
        styles_dir=copy_starter(tmp_path / "styles"),
        downloads=downloads,
        checksums=checksums,
        allow_downloads=allow,
    )


def test_fooocus_library_is_fetched_on_first_use_and_verified(tmp_path: Path) -> None:
    files = served_library(tmp_path)
    with serve_files(FileServer(files)) as srv:
        library = StyleLibrary.from_config(style_config(tmp_path, srv.base_url, files))
        # A Fooocus name that is not installed yet is not refused: the library is fetched first.
        library.check(["Fooocus V2", "Mk Chromolithography"])
        assert sorted(name for name, _ in srv.requests) == sorted(FOOOCUS_STYLE_FILES)
        names = library.names()
        assert names[2:] == FAKE_ORDER
        with pytest.raises(EngineInputError) as info:
            library.check(["Not A Fooocus Style"])
        assert info.value.field == "style_selections"
        assert len(srv.requests) == len(FOOOCUS_STYLE_FILES)  # nothing fetched twice
    folder = tmp_path / "styles"
    for name, body in files.items():
        assert (folder / name).read_bytes() == body
    assert not list(folder.glob("*.part"))
    assert not list(folder.glob("*.lock"))


def test_a_style_file_that_fails_verification_is_not_installed(tmp_path: Path) -> None:
    files = served_library(tmp_path)
    bad = "sdxl_styles_marc_k3nt3l.json"
    with serve_files(FileServer(files)) as srv:
        config = style_config(tmp_path, srv.base_url, files, bad=bad)
        library = StyleLibrary.from_config(config)
        with pytest.raises(EngineInputError) as info:
            library.check(["Mk Chromolithography"])
        message = str(info.value)
        assert "could not be fetched" in message
        assert bad in message
        assert srv.url(bad) in message
        assert "import_styles" in message
        library.check(["MRE Space Art"])  # the five good files are in place
        requests_before = len(srv.requests)
        # The failure is remembered for a while: the next check does not hammer the server.
        with pytest.raises(EngineInputError):
            StyleLibrary.from_config(config).check(["Mk Chromolithography"])
        assert len(srv.requests) == requests_before
    assert not (tmp_path / "styles" / bad).exists()
    assert not (tmp_path / "styles" / f"{bad}.part").exists()


def test_with_downloads_off_an_unknown_name_says_how_to_install(tmp_path: Path) -> None:
    files = served_library(tmp_path)
    config = style_config(tmp_path, "http://127.0.0.1:9", files, allow=False)
    library = StyleLibrary.from_config(config)
    assert library.names()[2:] == list(load_styles(tmp_path / "styles"))  # the starter set
    with pytest.raises(EngineInputError, match=r"downloads are off.*import_styles"):
        library.check(["Mk Chromolithography"])
