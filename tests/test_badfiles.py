"""The bad-file corpus (medclf.testing.badfiles) through discovery and preprocessing, in
both data.on_bad_file modes, and through the command line."""
import re
import resource

import numpy as np
import pandas as pd
import pytest

from medclf.cli import main
from medclf.config import Config
from medclf.data.formats.image import read_image
from medclf.data.prepare import prepare_splits
from medclf.data.sources.folder import discover, ignore_reason
from medclf.errors import BadFilesError, UnreadableImage
from medclf.testing.badfiles import png_bomb, write_corpus

from conftest import make_dataset

KINDS = ["zero_byte", "truncated_jpeg", "truncated_png", "text_named_jpg", "html_named_png", "one_pixel",
         "decompression_bomb", "volume_among_2d", "nan_float_tiff", "symlink_loop", "dangling_symlink",
         "cmyk_jpeg", "gray16_png", "rgba_png", "palette_png", "exif_rotated_jpeg", "unicode_and_spaces",
         "folder_named_like_image", "hidden_file", "macos_resource_fork", "ds_store",
         "nifti_volume_among_2d", "folder_symlink_loop"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small dataset whose train/disk folder also holds the whole corpus, run through
    discovery and preprocessing in 'error' and in 'skip' mode."""
    root = make_dataset(tmp_path_factory.mktemp("bad") / "data", per_class=(8, 8), splits=("train", "val", "test"))
    folder = root / "train" / "disk"
    cases = {c.kind: c for c in write_corpus(folder)}
    manifest = discover(root)
    results = {}
    for mode in ("error", "skip"):
        cfg = Config.model_validate({"data": {"on_bad_file": mode, "image_size": [32, 32]}})
        try:
            _, kept, bad = prepare_splits(manifest, cfg)
            results[mode] = {"kept": set(kept.frame.path), "bad": dict(bad), "error": None}
        except BadFilesError as err:
            results[mode] = {"kept": set(), "bad": dict(err.bad_files), "error": str(err)}
    return folder, cases, manifest, results


def test_corpus_has_every_kind(corpus):
    _, cases, _, _ = corpus
    assert sorted(cases) == sorted(KINDS) and len(KINDS) >= 15


@pytest.mark.parametrize("mode", ["error", "skip"])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_reported_read_or_ignored(corpus, kind, mode):
    folder, cases, manifest, results = corpus
    case = cases[kind]
    path = str((folder / case.name).absolute())
    result = results[mode]
    if case.outcome == "bad":
        assert path in result["bad"], f"{kind} not reported"
        assert re.search(case.reason, result["bad"][path]), result["bad"][path]
        if mode == "error":  # the whole message names the file and gives its reason
            assert result["error"] and f"{path}: {result['bad'][path]}" in result["error"]
        else:
            assert path not in result["kept"]
    elif case.outcome == "ok":
        assert path not in result["bad"]
        if mode == "skip":
            assert path in result["kept"]
        array, full_scale = read_image((folder / case.name).read_bytes(), case.expected.shape)
        assert array.shape == (1, *case.expected.shape)
        assert np.abs(array[0] / full_scale - case.expected).mean() < case.tolerance
    else:
        assert path not in set(manifest.frame.path) and path not in result["bad"]
        listed = [p for p in manifest.ignored if p.endswith(case.name)]
        assert listed, f"{kind} not recorded as ignored"
        assert re.search(case.reason, ignore_reason(listed[0])), ignore_reason(listed[0])


def test_error_mode_stops_only_for_bad_files(corpus):
    _, cases, _, results = corpus
    n_bad = sum(c.outcome == "bad" for c in cases.values())
    assert results["error"]["error"].startswith(f"{n_bad} file(s) cannot be read")
    assert len(results["skip"]["bad"]) == n_bad and results["skip"]["error"] is None


def test_bomb_is_rejected_from_its_header_without_decoding():
    data = png_bomb()
    assert len(data) < 500_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    with pytest.raises(UnreadableImage, match="900,000,000 pixels exceeds data.max_pixels"):
        read_image(data, (32, 32))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # never allocated 900 MB
    small_bomb = png_bomb(4000)  # 16 M pixels: under Pillow's limit, so data.max_pixels decides
    with pytest.raises(UnreadableImage, match="4000x4000 pixels exceeds data.max_pixels=10000000"):
        read_image(small_bomb, (32, 32), max_pixels=10_000_000)


def test_cli_lists_the_corpus_or_trains_without_it(tmp_path, capsys):
    root = make_dataset(tmp_path / "data", per_class=(8, 8), splits=("train", "val", "test"))
    cases = write_corpus(root / "train" / "bar")
    bad = [c for c in cases if c.outcome == "bad"]
    fast = ["--set", "train.max_epochs=1", "--set", "data.image_size=[24,24]", "--set", "model.filters=[4,8]",
            "--no-progress", "--out", str(tmp_path / "runs")]
    assert main(["train", str(root), *fast]) == 2
    err = capsys.readouterr().err
    assert f"{len(bad)} file(s) cannot be read" in err and "Traceback" not in err
    for case in bad:
        assert case.name in err

    assert main(["train", str(root), "--name", "skip", "--set", "data.on_bad_file=skip", *fast]) == 0
    run = tmp_path / "runs" / "skip"
    recorded = pd.read_csv(run / "bad_files.csv")
    assert sorted(p.rsplit("/", 1)[-1] for p in recorded.path) == sorted(c.name for c in bad)
    ignored = pd.read_csv(run / "ignored_files.csv")
    for case in (c for c in cases if c.outcome == "ignored"):
        assert ignored.path.str.endswith(case.name).any(), case.name
    split = pd.read_csv(run / "split.csv")
    for case in (c for c in cases if c.outcome == "ok"):
        assert split.path.str.endswith(case.name).any(), case.name
