"""`medclf predict --tta`: the averaged probabilities over flipped and shifted copies,
checked against copies built here with numpy and the model called directly."""
import numpy as np
import pandas as pd
import pytest
import torch

import medclf
from medclf import rundir
from medclf.cli import main
from medclf.data.preprocess import preprocess_all
from medclf.evaluation.predict import load_model


def numpy_views(images: np.ndarray, flip: bool, shift: int) -> list[np.ndarray]:
    """The originals, a left-right flip and the content moved by ``shift`` pixels down, up,
    right and left, the uncovered border filled with the edge pixels (np.pad 'edge')."""
    views = [images, images[..., ::-1]] if flip else [images]
    h, w = images.shape[-2:]
    s = shift
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(s, s), (s, s)], mode="edge")
    views.append(padded[..., 0:h, s:s + w])          # content moved down by s
    views.append(padded[..., 2 * s:2 * s + h, s:s + w])  # up
    views.append(padded[..., s:s + h, 0:w])          # right
    views.append(padded[..., s:s + h, 2 * s:2 * s + w])  # left
    return [np.ascontiguousarray(v) for v in views]


def test_predict_tta_is_the_mean_over_flipped_and_shifted_copies(tiny_run, tmp_path, capsys):
    data = tiny_run.parent.parent / "data" / "test"
    paths = sorted(str(p) for p in data.glob("*/*.png"))[:6]
    run = rundir.load_run(tiny_run)
    assert run.config.eval.tta is False  # the run's default: plain predictions
    plain = medclf.predict(tiny_run, paths)
    assert (plain.tta_views == 0).all() and not any(c.startswith("tta_prob_") for c in plain.columns)
    tta = medclf.predict(tiny_run, paths, tta=True)

    flip = run.config.augment.enabled and run.config.augment.flip_prob > 0
    h = run.config.data.image_size[0]
    shift = int(round(run.config.eval.tta_shift * h))
    assert shift >= 1
    arrays, _, bad = preprocess_all(paths, run.config)
    assert not bad
    images = np.stack(arrays)
    model = load_model(run)
    with torch.no_grad():
        outputs = [model(torch.from_numpy(v)).softmax(dim=1).numpy() for v in numpy_views(images, flip, shift)]
    expected = np.mean(outputs, axis=0)

    names = run.class_names
    assert (tta.tta_views == len(outputs)).all()
    got = tta[[f"tta_prob_{n}" for n in names]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the plain columns stay the one-pass probabilities, and TTA changes them
    np.testing.assert_allclose(tta[[f"prob_{n}" for n in names]].to_numpy(),
                               plain[[f"prob_{n}" for n in names]].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(plain[[f"prob_{n}" for n in names]].to_numpy(), outputs[0], atol=1e-5)
    assert np.abs(got - outputs[0]).max() > 1e-4
    assert list(tta.predicted) == [names[i] for i in expected.argmax(axis=1)]
    assert tta.probability.to_numpy() == pytest.approx(expected.max(axis=1), abs=1e-5)

    csv = tmp_path / "tta.csv"
    assert main(["predict", str(tiny_run), *paths[:2], "--tta", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert f"test-time augmentation, {len(outputs)} views" in out
    frame = pd.read_csv(csv, keep_default_na=False)
    assert (frame.tta_views == len(outputs)).all()
    assert frame[[f"tta_prob_{n}" for n in names]].to_numpy() == pytest.approx(got[:2], abs=1e-6)
