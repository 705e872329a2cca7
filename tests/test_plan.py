"""The planner (medclf.plan.Planner): fingerprint -> typed default Config, one decision per
``determine_*`` method, its thresholds as class attributes."""
import inspect
import re

import numpy as np
import pytest

import medclf.plan
from medclf.config import Config, validate
from medclf.plan import Planner, plan_config


def fp2d(size, train, **extra):
    return {"spatial_dims": 2, "median_size": size, "counts": {"train": train, "test": {"a": 5, "b": 5}},
            "readers": {"image": 1}, **extra}


def fp3d(size, train, **extra):
    return {"spatial_dims": 3, "median_size": size, "counts": {"train": train}, "readers": {"nifti": 1}, **extra}


BALANCED = {"a": 1500, "b": 1500}  # above Planner.FOLDS_MAX_IMAGES: one model (the k-fold plan: test_folds.py)


def test_small_images_keep_their_size_with_a_full_resolution_narrow_network():
    cfg = Planner(fp2d([28, 28], BALANCED)).plan()
    assert isinstance(cfg, Config)
    assert cfg.data.image_size == [28, 28]
    assert cfg.model.stem_stride == 1 and cfg.model.stem_kernel_size == 3
    assert cfg.model.filters == [16, 32, 64]
    assert cfg.augment.flip_prob == 0.0 and cfg.augment.batched is True
    assert cfg.train.max_epochs == 16 and cfg.train.early_stopping.patience == 8
    assert cfg.train.ema_epochs == 2.0
    assert cfg.model.spatial_dims == 2 and cfg.eval.tta is False


@pytest.mark.parametrize("train", [BALANCED, {"a": 300, "b": 300}])  # one model; the k-fold ensemble
def test_classification_images_that_train_with_the_mirror_predict_with_it(train):
    """2D classification: the image and its mirror averaged (no shifts) when training flips
    left-right, for the one model and the k-fold ensemble; thumbnails (no flips): one pass."""
    cfg = Planner(fp2d([512, 512], train)).plan()
    assert cfg.augment.flip_prob > 0 and cfg.eval.tta is True and cfg.eval.tta_shift == 0.0
    assert (cfg.train.folds >= 2) is (train is not BALANCED)
    small = Planner(fp2d([28, 28], train)).plan()
    assert small.augment.flip_prob == 0.0 and small.eval.tta is False


@pytest.mark.parametrize("size, side", [([1500, 1600], 224), ([100, 120], 100), ([0, 0], 224)])
def test_larger_images_are_shrunk_never_upsampled_and_keep_the_default_network(size, side):
    default = Config()
    cfg = Planner(fp2d(size, BALANCED)).plan()
    assert cfg.data.image_size == [side, side]
    assert cfg.model.stem_stride == default.model.stem_stride == 2
    assert cfg.model.filters == default.model.filters
    assert cfg.augment.flip_prob == default.augment.flip_prob
    assert cfg.augment.batched is True  # every 2D plan augments in batches (determine_protocol)
    assert cfg.train.ema_epochs == 0.0 and cfg.train.folds == 0
    assert cfg.train.max_epochs == Planner.BUDGET_MAX_EPOCHS  # one model: its time budget decides, up to the cap


@pytest.mark.parametrize("train, sampler, output_prior", [
    ({"a": 100, "b": 900}, "balanced", "balanced"),   # 1:9, strong
    ({"a": 100, "b": 300}, "balanced", "training"),   # 1:3, mild
    ({"a": 100, "b": 250}, "balanced", "training"),   # 1:2.5
    ({"a": 100, "b": 400}, "balanced", "balanced"),   # 1:4, the strong threshold
    ({"a": 100, "b": 199}, "shuffle", "training"),    # under 2:1
    ({"a": 100, "b": 100}, "shuffle", "training"),
    ({"a": 0, "b": 100}, "shuffle", "balanced"),      # one empty class: nothing to balance
])
@pytest.mark.parametrize("make", [lambda t: fp2d([28, 28], t), lambda t: fp3d([64, 64, 64], t)])
def test_imbalance_decides_sampler_and_output_prior(make, train, sampler, output_prior):
    cfg = Planner(make(train)).plan()
    assert cfg.train.sampler == sampler
    assert cfg.train.output_prior == output_prior


def test_binary_volumes_get_the_projection_branch_on_a_64_grid_shrunk_by_max():
    cfg = Planner(fp3d([64, 64, 64], BALANCED, binary=True)).plan()
    assert cfg.data.image_size == [64, 64, 64] and cfg.preprocess.shrink == "max"
    assert cfg.model.projection_branch is True and cfg.model.volume_pool == 1
    assert cfg.model.spatial_dims == 3 and cfg.model.filters == [8, 16, 32, 64]
    assert cfg.model.downsample == "maxpool" and cfg.model.stem_pool is False
    small = Planner(fp3d([28, 28, 28], BALANCED, binary=True)).plan()
    assert small.data.image_size == [28, 28, 28] and small.model.volume_pool == 0


def test_intensity_volumes_are_averaged_to_a_32_grid_without_projections():
    cfg = Planner(fp3d([64, 64, 64], BALANCED)).plan()
    assert cfg.data.image_size == [32, 32, 32] and cfg.preprocess.shrink == "area"
    assert cfg.model.projection_branch is False and cfg.model.volume_pool == 0
    assert cfg.augment.depth_flip_prob == 0.5 and cfg.augment.rot90_prob == 0.5 and cfg.augment.prob == 0.0
    assert cfg.train.lr == 1e-3 and cfg.train.max_epochs == 20 and cfg.train.early_stopping.patience == 10
    assert cfg.eval.tta is True and cfg.eval.tta_shift == 0.0
    assert Planner(fp3d([0, 0, 0], BALANCED)).plan().data.image_size == [32, 32, 32]
    assert Planner(fp3d([40, 128, 128], BALANCED)).plan().data.image_size == [10, 32, 32]


@pytest.mark.parametrize("dims, size, dtypes, normalization", [
    (3, [28, 28, 28], {"uint8": 10}, "scale255"),
    (3, [28, 28, 28], {"float32": 10}, "percentile"),
    (2, [28, 28], {"uint8": 10}, "percentile"),   # 2D keeps the per-image stretch
])
def test_uint8_npz_volumes_keep_their_full_scale(dims, size, dtypes, normalization):
    fp = {"spatial_dims": dims, "median_size": size, "counts": {"train": BALANCED},
          "readers": {"npz": 10}, "dtypes": dtypes}
    assert Planner(fp).plan().preprocess.normalization == normalization


@pytest.mark.parametrize("dims, n_train, batch_size", [
    (2, 10, 8), (2, 100, 12), (2, 4000, 64), (3, 10, 4), (3, 100, 12), (3, 4000, 32),
])
def test_batch_size_is_an_eighth_of_the_training_split_within_bounds(dims, n_train, batch_size):
    size = [100, 100] if dims == 2 else [32, 32, 32]
    train = {"a": n_train // 2, "b": n_train - n_train // 2}
    fp = {"spatial_dims": dims, "median_size": size, "counts": {"train": train}}
    assert Planner(fp).plan().train.batch_size == batch_size


@pytest.mark.parametrize("fp", [
    fp2d([1500, 1600], {"a": 300, "b": 100}), fp2d([28, 28], {"a": 3494, "b": 388}),
    fp3d([64, 64, 64], {"a": 400, "b": 110}, binary=True, readers={"npz": 1}, dtypes={"uint8": 1}),
    fp3d([0, 0, 0], {"a": 10, "b": 10}),
])
def test_plan_config_is_the_planners_tree_and_validates(fp):
    tree = plan_config(fp)
    assert isinstance(tree, dict)
    assert tree == Planner(fp).plan().to_dict()
    assert validate(tree).to_dict() == tree


# Each determine_* method, and a fingerprint on which leaving it out changes the plan.
DECISIONS = {
    "determine_sampler": fp2d([28, 28], {"a": 100, "b": 900}),
    "determine_output_prior": fp2d([28, 28], BALANCED),
    "determine_batch_size": fp2d([28, 28], {"a": 2000, "b": 2000}),
    "determine_normalization": fp3d([28, 28, 28], BALANCED, readers={"npz": 1}, dtypes={"uint8": 1}),
    "determine_tta": fp3d([28, 28, 28], BALANCED),
    "determine_output_bias": fp2d([1500, 1600], BALANCED),
    "determine_kept_weights": fp3d([64, 64, 64], BALANCED),
    "determine_image_size": fp2d([100, 120], BALANCED),
    "determine_channels": fp2d([1500, 1600], BALANCED, colour_fraction=1.0),
    "determine_contrast": fp2d([1500, 1600], BALANCED, colour_fraction=1.0),
    "determine_protocol": fp2d([1500, 1600], {"a": 100, "b": 100}),
    "determine_folds_within_budget": fp2d([28, 28], BALANCED),
    "determine_small_image_network": fp2d([28, 28], BALANCED),
    "determine_small_image_augmentation": fp2d([28, 28], BALANCED),
    "determine_small_image_training": fp2d([28, 28], BALANCED),
    "determine_3d_grid": fp3d([64, 64, 64], BALANCED),
    "determine_3d_network": fp3d([64, 64, 64], BALANCED),
    "determine_3d_augmentation": fp3d([64, 64, 64], BALANCED),
    "determine_3d_training": fp3d([64, 64, 64], BALANCED),
}


def test_every_determine_method_is_listed_here():
    methods = {name for name, _ in inspect.getmembers(Planner, inspect.isfunction) if name.startswith("determine_")}
    assert methods == set(DECISIONS)


@pytest.mark.parametrize("name", sorted(DECISIONS))
def test_every_determine_method_is_used_by_plan(name):
    fp = DECISIONS[name]
    skipped = type("Skipping", (Planner,), {name: lambda self, cfg: None})
    assert skipped(fp).plan().to_dict() != Planner(fp).plan().to_dict()


@pytest.mark.parametrize("constant, value, fp, path, expected", [
    ("MAX_SIDE_2D", 128, fp2d([1500, 1600], BALANCED), ("data", "image_size"), [128, 128]),
    ("SMALL_IMAGE_SIDE", 20, fp2d([28, 28], BALANCED), ("model", "stem_stride"), 2),
    ("SMALL_FILTERS", (8, 16), fp2d([28, 28], BALANCED), ("model", "filters"), [8, 16]),
    ("IMBALANCE_RATIO", 10.0, fp2d([28, 28], {"a": 100, "b": 900}), ("train", "sampler"), "shuffle"),
    ("STRONG_IMBALANCE_RATIO", 2.0, fp2d([28, 28], {"a": 100, "b": 300}), ("train", "output_prior"), "balanced"),
    ("COLOUR_SHARE", 0.2, fp2d([300, 300], BALANCED, colour_fraction=0.3), ("data", "in_channels"), 3),
    ("GRID_3D", 16, fp3d([64, 64, 64], BALANCED), ("data", "image_size"), [16, 16, 16]),
    ("GRID_3D_MASKS", 32, fp3d([64, 64, 64], BALANCED, binary=True), ("model", "volume_pool"), 0),
    ("MAX_BATCH_3D", 16, fp3d([32, 32, 32], {"a": 2000, "b": 2000}), ("train", "batch_size"), 16),
    ("LR_3D", 3e-4, fp3d([32, 32, 32], BALANCED), ("train", "lr"), 3e-4),
])
def test_a_subclass_changing_one_constant_changes_the_plan(constant, value, fp, path, expected):
    section, key = path
    planned = Planner(fp).plan().to_dict()[section][key]
    changed = type("Custom", (Planner,), {constant: value})(fp).plan().to_dict()[section][key]
    assert changed == expected != planned


@pytest.mark.parametrize("colour_fraction, steps", [(1.0, ["local_contrast"]), (0.0, [])])
def test_colour_photographs_get_the_local_contrast_step_and_grayscale_images_none(colour_fraction, steps):
    fp = fp2d([224, 224], {"a": 3000, "b": 1000}, colour_fraction=colour_fraction)
    planned = plan_config(fp)
    assert [step["name"] for step in planned["preprocess"]["steps"]] == steps
    custom = type("Custom", (Planner,), {"COLOUR_STEPS": ({"name": "clahe", "clip_limit": 0.02},)})(fp).plan()
    assert [(s.name, getattr(s, "clip_limit", None)) for s in custom.preprocess.steps] == \
        ([("clahe", 0.02)] if steps else [])


@pytest.mark.parametrize("fp, task, keep, early_stopping", [
    (fp2d([224, 224], {"a": 3000, "b": 1000}), "classification", "last", False),
    (fp3d([64, 64, 64], {"a": 900, "b": 250}), "classification", "last", False),
    (fp2d([224, 224], {"a": 3000, "b": 1000}), "multilabel", "best", True),
    (fp2d([224, 224], {"a": 3000, "b": 1000}), "regression", "best", True),
])
def test_classification_keeps_the_last_weights_and_other_tasks_the_best_epoch(fp, task, keep, early_stopping):
    planned = Planner({**fp, "task": task}).plan()
    assert planned.train.keep_weights == keep
    assert planned.train.early_stopping.enabled is early_stopping


def test_planner_source_quotes_no_test_split_figures():
    """Measured figures belong in docs/benchmarks.md, not in the planner's docstrings."""
    source = inspect.getsource(medclf.plan)
    assert not re.search(r"test (ROC )?AUC|test accuracy|test balanced", source)


def test_fingerprint_probes_a_bounded_sample(monkeypatch):
    import pandas as pd

    import medclf.plan as plan
    from medclf.data.sources import Manifest
    probed = []

    def fake_probe(path):
        probed.append(path)
        return {"shape": [300, 200], "spatial_dims": 2, "format": "image", "mode": "L"}

    monkeypatch.setattr(plan, "probe", fake_probe)
    paths = [f"/data/{c}/{i}.png" for c in ("a", "b") for i in range(3000)]
    frame = pd.DataFrame({"path": paths, "label": [p.split("/")[2] for p in paths], "split": "train"})
    facts = plan.fingerprint(Manifest(frame, ["a", "b"]))
    assert len(probed) == plan.PROBE_LIMIT
    assert {p.split("/")[2] for p in probed} == {"a", "b"} and probed[-1] == paths[-1]
    assert facts["median_size"] == [300, 200] and facts["counts"]["train"] == {"a": 3000, "b": 3000}
    assert facts["formats"] == {"png": 6000}


def _photo(path, kind, rng):
    """A 96x96 JPEG: 'gray' (three equal channels), 'tinted' (gray with a green cast, two
    channels equal, as some X-ray collections are stored) or 'colour' (three differing channels)."""
    from PIL import Image
    gray = rng.integers(0, 200, (96, 96)).astype(np.float32)
    if kind == "gray":
        rgb = np.stack([gray] * 3, -1)
    elif kind == "tinted":
        rgb = np.stack([gray, gray * 1.2 + 20, gray], -1)
    else:
        rgb = np.stack([gray + 50, gray * 0.6, gray * 0.2], -1)
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path, quality=95)
    return str(path)


@pytest.mark.parametrize("kinds, fraction, in_channels", [
    (["gray"] * 4, 0.0, 1), (["tinted"] * 4, 0.0, 1), (["colour"] * 4, 1.0, 3),
    (["colour", "gray", "gray", "gray"], 0.25, 1), (["colour", "colour", "tinted", "gray"], 0.5, 3),
])
def test_colour_photographs_are_planned_rgb_and_gray_or_tinted_ones_grayscale(tmp_path, kinds, fraction, in_channels):
    import pandas as pd

    from medclf.data.sources import Manifest
    rng = np.random.default_rng(0)
    paths = [_photo(tmp_path / f"{i}.jpg", kind, rng) for i, kind in enumerate(kinds)]
    frame = pd.DataFrame({"path": paths, "label": ["a", "b"] * 2, "split": "train"})
    facts = medclf.plan.fingerprint(Manifest(frame, ["a", "b"]))
    assert facts["colour_fraction"] == fraction
    assert Planner({**facts, "counts": {"train": BALANCED}}).plan().data.in_channels == in_channels


def test_channel_difference_is_in_gray_levels_and_none_without_colour(tmp_path):
    from PIL import Image

    from medclf.data.formats import channel_difference
    rng = np.random.default_rng(1)
    assert channel_difference(_photo(tmp_path / "g.jpg", "gray", rng)) < medclf.plan.COLOUR_LEVELS
    assert channel_difference(_photo(tmp_path / "t.jpg", "tinted", rng)) < medclf.plan.COLOUR_LEVELS
    assert channel_difference(_photo(tmp_path / "c.jpg", "colour", rng)) > 20.0
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "l.png")
    assert channel_difference(str(tmp_path / "l.png")) is None  # stored in a gray mode
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert channel_difference(str(tmp_path / "bad.jpg")) is None


@pytest.mark.parametrize("task, size, tta", [("multilabel", [512, 512], True), ("regression", [512, 512], False),
                                             ("multilabel", [28, 28], False)])
def test_multilabel_plans_predict_with_the_mirror_they_trained_with(task, size, tta):
    """Multi-label photographs that train with left-right flips predict with them too; regression
    and small images (no flips) predict in one pass."""
    tree = plan_config(fp2d(size, BALANCED, task=task))
    assert tree["data"]["task"] == task
    assert tree["train"]["class_weights"] == "none"  # multilabel: no positive weights (thresholds come from validation)
    assert tree["eval"]["tta"] is tta and (tree["augment"]["flip_prob"] > 0) is (size[0] > 28)
    if tta:
        assert tree["eval"]["tta_shift"] == 0.0


def test_thumbnails_over_the_fold_limit_get_the_k_fold_ensemble_when_it_fits_the_one_model_budget():
    from medclf.plan import n_pool, n_train
    from medclf.training.budget import planned_seconds
    thumbnails = fp2d([28, 28], {"a": 3494, "b": 388})  # PneumoniaMNIST-sized, over FOLDS_MAX_IMAGES
    large = fp2d([1500, 1600], BALANCED)
    assert n_pool(thumbnails) > Planner.FOLDS_MAX_IMAGES
    folded = Planner(thumbnails).plan()
    assert folded.train.folds == Planner.FOLDS
    assert folded.train.output_bias == "none"  # the ensemble's threshold comes from out-of-fold predictions
    # the epochs, side and budget stay those planned for one model; its estimate fits that budget
    one = type("NoBudgetFolds", (Planner,), {"determine_folds_within_budget": lambda self, cfg: None})(thumbnails).plan()
    assert (folded.train.max_epochs, folded.data.image_size, folded.train.time_budget_s) == \
        (one.train.max_epochs, one.data.image_size, one.train.time_budget_s)
    assert planned_seconds(folded, n_pool(thumbnails), n_train(thumbnails)) <= Planner.BUDGET_2D_S
    # large images: k models would not fit, so one model
    assert Planner(large).plan().train.folds == 0
    # a smaller budget keeps the thumbnails at one model too
    tight = type("Tight", (Planner,), {"BUDGET_2D_S": 10.0})(thumbnails).plan()
    assert tight.train.folds == 0 and tight.train.output_bias == "validation"
    # other tasks and volumes never fold
    assert Planner({**thumbnails, "task": "multilabel"}).plan().train.folds == 0
    assert Planner(fp3d([28, 28, 28], {"a": 3494, "b": 388})).plan().train.folds == 0
