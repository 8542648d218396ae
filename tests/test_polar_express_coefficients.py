"""The Polar Express coefficient generator reproduces the published sets (ALGORITHMS.md §2)."""

import numpy as np
import pytest

from specopt.linalg import (
    POLAR_EXPRESS_5_STEP_ARGS,
    POLAR_EXPRESS_8_STEP_ARGS,
    _optimal_odd_quintic,
    polar_express_coefficients,
)

# Amsel, Persson, Musco & Gower (2025), the 8-step set (raw, before the use-time safety).
PUBLISHED_8_STEP = [
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
]

# The 5-step set (l = 1e-3, cushion 0.02, safety 1.02), as used by modded-nanogpt and Dion.
PUBLISHED_5_STEP = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]


@pytest.mark.parametrize(
    "steps, args, published",
    [(8, POLAR_EXPRESS_8_STEP_ARGS, PUBLISHED_8_STEP), (5, POLAR_EXPRESS_5_STEP_ARGS, PUBLISHED_5_STEP)],
    ids=["8-step", "5-step"],
)
def test_generator_reproduces_published_sets(steps, args, published):
    generated = np.array(polar_express_coefficients(steps, **args))
    np.testing.assert_allclose(generated, np.array(published), rtol=0, atol=1e-9)


def test_optimal_quintic_equioscillates():
    lo, hi = 0.05, 1.0
    a, b, c = _optimal_odd_quintic(lo, hi)
    x = np.linspace(lo, hi, 200_001)
    err = 1 - (a * x + b * x**3 + c * x**5)
    level = np.abs(err).max()
    # the error reaches ±level at the two ends (signs +, −) and is smaller everywhere else
    assert err[0] == pytest.approx(level, rel=1e-9)
    assert err[-1] == pytest.approx(-level, rel=1e-9)
    # and no other odd quintic with a perturbed coefficient does better
    for da in (1e-3, -1e-3):
        other = 1 - ((a + da) * x + b * x**3 + c * x**5)
        assert np.abs(other).max() > level


def test_generator_later_steps_converge_to_taylor_map():
    coefficients = polar_express_coefficients(12, **POLAR_EXPRESS_8_STEP_ARGS)
    np.testing.assert_allclose(coefficients[-1], (15 / 8, -10 / 8, 3 / 8), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"steps": 0}, "steps"), ({"steps": 3, "l": 0.0}, "l "), ({"steps": 3, "cushion": 1.5}, "cushion"),
     ({"steps": 3, "safety": 0.9}, "safety")],
)
def test_generator_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        polar_express_coefficients(**kwargs)
