"""Batched augmentation: exact flips and rotations, per-sample randomness, identity when off."""
import torch

from medclf.config import AugmentConfig
from medclf.data.augment import BatchAugmentation

OFF = dict(prob=0.0, flip_prob=0.0, vertical_flip_prob=0.0, depth_flip_prob=0.0, rot90_prob=0.0,
           brightness=0.0, contrast=0.0, noise_std=0.0)


def test_everything_off_is_identity_and_zero_affine_is_nearly_so():
    x = torch.rand(6, 1, 5, 7, 9)
    assert torch.equal(BatchAugmentation(AugmentConfig(**OFF), 3, 0)(x), x)
    still = AugmentConfig(**{**OFF, "prob": 1.0, "rotate_deg": 0.0, "zoom": 0.0, "translate": 0.0, "shear": 0.0})
    assert torch.allclose(BatchAugmentation(still, 3, 0)(x), x, atol=1e-5)
    x2 = torch.rand(6, 3, 8, 8)
    assert torch.allclose(BatchAugmentation(still, 2, 0)(x2), x2, atol=1e-5)


def test_flips_and_rotations_are_exact_and_random_per_sample():
    x = torch.arange(4 * 4 * 4, dtype=torch.float32).reshape(1, 1, 4, 4, 4).repeat(64, 1, 1, 1, 1)
    out = BatchAugmentation(AugmentConfig(**{**OFF, "depth_flip_prob": 0.5, "rot90_prob": 0.5}), 3, 1)(x)
    variants = {x[0].flip(1).rot90(k, (2, 3)).numpy().tobytes() for k in range(4)} | \
               {x[0].rot90(k, (2, 3)).numpy().tobytes() for k in range(4)}
    seen = {o.numpy().tobytes() for o in out}
    assert seen <= variants and len(seen) >= 4  # only exact flips/rotations, and several of them
    assert torch.equal(out.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)  # values only move


def test_affine_changes_samples_differently_and_keeps_shape():
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, 4:12, 6:10] = 1
    cfg = AugmentConfig(**{**OFF, "prob": 1.0, "rotate_deg": 30.0, "translate": 0.1})
    out = BatchAugmentation(cfg, 2, 0)(x)
    assert out.shape == x.shape and not torch.allclose(out, x)
    assert len({round(float((o - x[0]).abs().sum()), 3) for o in out}) == 8
