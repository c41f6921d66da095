"""Motion clean-up math (addon/rig/motion.py): smoothing on SO(3) and R^3, jitter, foot contacts
and foot pinning, on synthetic clips with known answers (numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

from addon.rig import motion
from addon.rig.axes import quat_xyzw_to_matrix

FPS = 30.0


def _axis_angle(axis, angle):
    """Quaternions (..., 4) xyzw for rotations by angle (array, radians) about a unit axis."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    angle = np.asarray(angle, dtype=np.float64)[..., None]
    return np.concatenate([np.sin(angle / 2) * axis, np.cos(angle / 2)], axis=-1)


def _noise_quats(rng, shape, sigma_deg):
    return motion._qexp(rng.normal(size=shape + (3,)) * np.radians(sigma_deg))


def _angle_between(a, b):
    dot = np.abs(np.sum(a * b, axis=-1))
    return np.degrees(2 * np.arccos(np.clip(dot, -1.0, 1.0)))


def _signed_angle(q, axis):
    """Signed angle (degrees) of rotations about a known axis."""
    axis = np.asarray(axis) / np.linalg.norm(axis)
    return np.degrees(2 * np.arctan2(q[..., :3] @ axis, q[..., 3]))


def _rotated_points(q):
    offsets = np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.3]])
    pts = np.einsum("...ij,kj->...ki", quat_xyzw_to_matrix(q), offsets)
    return pts.reshape(q.shape[0], -1, 3)


# --- continuity and identity -------------------------------------------------------------------

def test_continuity_flips_signs():
    rng = np.random.default_rng(0)
    clean = motion.quat_continuity(_axis_angle([1, 2, 3], np.linspace(0, 3, 40))[:, None])
    flips = np.where(rng.random((40, 1)) < 0.4, -1.0, 1.0)
    flips[0] = 1.0
    flipped = clean * flips[..., None]
    assert np.any(np.sum(flipped[1:] * flipped[:-1], axis=-1) < 0)
    out = motion.quat_continuity(flipped)
    assert np.all(np.sum(out[1:] * out[:-1], axis=-1) >= 0)
    assert np.allclose(out, clean)
    assert out is not flipped and np.any(flipped != out)


def test_strength_zero_is_an_exact_copy():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(12, 3, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[3] *= -1
    x = rng.normal(size=(12, 3, 3))
    for fn, arr in ((motion.smooth_rotations, q), (motion.smooth_positions, x)):
        out = fn(arr, 0.0)
        assert out is not arr and np.array_equal(out, arr)


# --- rotations -----------------------------------------------------------------------------------

def test_noisy_constant_rotation_gets_smoother_and_stays_unit():
    rng = np.random.default_rng(2)
    q0 = _axis_angle([0.2, -1, 0.5], np.full((100, 4), 1.1))
    noisy = motion._qmul(q0, _noise_quats(rng, (100, 4), 2.0))
    noisy[rng.random((100, 4)) < 0.3] *= -1
    smooth = motion.smooth_rotations(noisy, 2.0)
    assert smooth.shape == noisy.shape
    assert np.allclose(np.linalg.norm(smooth, axis=-1), 1.0, atol=1e-12)
    assert np.all(np.sum(smooth[1:] * smooth[:-1], axis=-1) >= 0)
    before, after = motion.jitter(_rotated_points(noisy)), motion.jitter(_rotated_points(smooth))
    assert after * 3 < before
    assert _angle_between(smooth, q0).mean() * 2 < _angle_between(noisy, q0).mean()


def test_720_degree_spin_has_no_wrapping_artefacts():
    rng = np.random.default_rng(3)
    axis = [0.3, 0.4, -0.87]
    t = np.arange(120)
    clean = _axis_angle(axis, np.radians(720.0) * t / (len(t) - 1))   # ~6 degrees per frame
    tilt = _axis_angle([1, 0, 0], 0.4)
    clean = motion._qmul(tilt, clean)
    noisy = motion._qmul(clean, _noise_quats(rng, (120,), 0.5))
    noisy[rng.random(120) < 0.5] *= -1
    smooth = motion.smooth_rotations(noisy, 2.0)
    err = _angle_between(smooth, clean)
    interior = slice(6, -6)      # the truncated window pulls the end frames toward the interior
    assert err[interior].max() < 1.0
    steps = _angle_between(smooth[1:], smooth[:-1])
    assert steps.max() < 9.0 and steps[5:-5].min() > 4.0          # no jump, no standstill
    assert np.all(np.sum(smooth[1:] * smooth[:-1], axis=-1) >= 0)


def test_rotation_step_is_zero_lag():
    axis = [0, 0, 1]
    angles = np.where(np.arange(60) < 30, 0.0, np.radians(40.0))
    smooth = _signed_angle(motion.smooth_rotations(_axis_angle(axis, angles), 2.0), axis)
    assert 10.0 < smooth[29] < 20.0 < smooth[30] < 30.0
    assert np.isclose(smooth[29] + smooth[30], 40.0, atol=1e-9)    # symmetric about the step
    assert abs(smooth[0]) < 1e-9 and abs(smooth[-1] - 40.0) < 1e-9


def test_constant_angular_velocity_is_unchanged_in_the_interior():
    q = motion._qmul(_axis_angle([1, 1, 0], 0.7), _axis_angle([0, 1, 2], 0.09 * np.arange(50)))
    smooth = motion.smooth_rotations(q, 3.0)
    r = 9                        # the window radius, ceil(3 * strength)
    assert np.allclose(smooth[r:-r], q[r:-r], atol=1e-10)


# --- positions -----------------------------------------------------------------------------------

def test_position_step_ramp_and_noise():
    step = np.zeros((60, 3))
    step[30:] = [0.0, 0.4, 0.0]
    smooth = motion.smooth_positions(step, 2.0)[:, 1]
    assert 0.1 < smooth[29] < 0.2 < smooth[30] < 0.3
    ramp = np.arange(50)[:, None, None] * np.array([0.01, -0.02, 0.03]) + np.ones((1, 2, 3))
    assert np.allclose(motion.smooth_positions(ramp, 2.5)[8:-8], ramp[8:-8], atol=1e-12)
    rng = np.random.default_rng(4)
    noisy = ramp + rng.normal(scale=0.01, size=ramp.shape)
    assert motion.jitter(motion.smooth_positions(noisy, 2.0)) * 3 < motion.jitter(noisy)


def test_smooth_skel_states():
    rng = np.random.default_rng(5)
    states = np.zeros((30, 4, 8))
    states[..., :3] = rng.normal(size=(30, 4, 3)) * 10
    states[..., 3:7] = _noise_quats(rng, (30, 4), 20.0)
    states[..., 7] = 1.0
    assert np.array_equal(motion.smooth_skel_states(states, 0), states)
    out = motion.smooth_skel_states(states.astype(np.float32), 1.5)
    assert out.shape == (30, 4, 8) and out.dtype == np.float64
    assert np.allclose(out[..., :3], motion.smooth_positions(states[..., :3].astype(np.float32), 1.5))
    assert np.allclose(np.linalg.norm(out[..., 3:7], axis=-1), 1.0)
    assert np.allclose(out[..., 7], 1.0)
    assert motion.jitter(out[..., :3]) < motion.jitter(states[..., :3]) / 3


def test_bad_inputs_raise():
    q = np.tile([0, 0, 0, 1.0], (5, 1))
    with pytest.raises(ValueError, match="trailing axis of 4"):
        motion.smooth_rotations(np.zeros((5, 3)), 1.0)
    with pytest.raises(ValueError, match="strength"):
        motion.smooth_rotations(q, -1.0)
    with pytest.raises(ValueError, match="non-finite"):
        motion.smooth_positions(np.full((5, 3), np.nan), 1.0)
    with pytest.raises(ValueError, match="zero-length"):
        motion.smooth_rotations(np.zeros((5, 4)), 1.0)
    with pytest.raises(ValueError, match="trailing axis of 8"):
        motion.smooth_skel_states(np.zeros((5, 2, 7)), 1.0)
    with pytest.raises(ValueError, match="frames"):
        motion.pin_feet(np.zeros((5, 3)), np.zeros((6, 2, 3)), np.zeros((6, 2), bool))
    with pytest.raises(ValueError, match="contacts"):
        motion.pin_feet(np.zeros((5, 3)), np.zeros((5, 2, 3)), np.zeros((5, 3), bool))


# --- jitter --------------------------------------------------------------------------------------

def test_jitter_of_a_parabola_is_its_acceleration():
    t = np.arange(20) / FPS
    accel = np.array([1.0, 2.0, 2.0])                      # |a| = 3 m/s^2
    p = 0.5 * t[:, None, None] ** 2 * accel + np.array([[0, 0, 1.0], [2.0, 0, 0]]) + t[:, None, None]
    assert np.isclose(motion.jitter(p, fps=FPS), 3.0)
    assert np.isclose(motion.jitter(p[:, 0], fps=FPS), 3.0)
    with pytest.raises(ValueError, match="at least 3"):
        motion.jitter(p[:2], fps=FPS)


# --- foot contacts and pinning -------------------------------------------------------------------

def _walk(runs, n_frames=60, root_speed=0.04, ankle=0.08):
    """World feet (T, 2, 3) of a walk along +Y: each foot stands still during its contact runs
    and swings (lifting 10 cm, easing in and out) from one footprint to the next in between."""
    root = np.stack([np.zeros(n_frames), root_speed * np.arange(n_frames), np.full(n_frames, 0.9)], 1)
    feet, contacts = np.zeros((n_frames, 2, 3)), np.zeros((n_frames, 2), bool)
    for f, foot_runs in enumerate(runs):
        side = 0.12 if f == 0 else -0.12
        prints = [(s, e, root[(s + e) // 2, 1]) for s, e in foot_runs]
        y = np.interp(np.arange(n_frames), [p for s, e, _ in prints for p in (s, e - 1)],
                      [y for _, _, y in prints for _ in (0, 1)])
        lift = np.zeros(n_frames)
        for (_, e0, y0), (s1, _, y1) in zip(prints, prints[1:]):
            u = (np.arange(e0 - 1, s1 + 1) - (e0 - 1)) / (s1 - e0 + 1)
            y[e0 - 1:s1 + 1] = y0 + (y1 - y0) * (1 - np.cos(np.pi * u)) / 2
            lift[e0 - 1:s1 + 1] = 0.10 * np.sin(np.pi * u)
        feet[:, f] = np.stack([np.full(n_frames, side), y, ankle + lift], 1)
        for s, e in foot_runs:
            contacts[s:e, f] = True
    return root, feet, contacts


# Alternating steps; each foot also stands at the clip end it starts or ends on.
WALK = ([(0, 10), (20, 30), (40, 60)], [(0, 20), (30, 40), (50, 60)])


def test_foot_contacts_find_the_planted_runs():
    rng = np.random.default_rng(6)
    _, feet, truth = _walk(WALK)
    found = motion.foot_contacts(feet + rng.normal(scale=0.001, size=feet.shape), FPS)
    assert found.shape == truth.shape and found.dtype == bool
    for f in range(2):
        runs = motion._runs(found[:, f])
        assert len(runs) == 3, runs
        for (s, e), (ts, te) in zip(runs, motion._runs(truth[:, f])):
            assert ts <= s <= ts + 2 and te - 2 <= e <= te, (f, s, e, ts, te)


def test_hovering_foot_and_short_blips_are_not_contacts():
    n = 30
    feet = np.zeros((n, 2, 3))
    feet[:, 1, 2] = 0.5                      # standing still, but half a metre up
    assert motion.foot_contacts(feet, FPS)[:, 0].all()
    assert not motion.foot_contacts(feet, FPS)[:, 1].any()
    feet[:, 0, 1] = np.arange(n) * 0.05      # 1.5 m/s: moving, except a 2-frame pause
    feet[10:12, 0, 1] = feet[10, 0, 1]
    feet[12:, 0, 1] -= 0.05
    # The pause's central-difference speed is 0.75 m/s: a contact under a 1 m/s threshold, but
    # only 2 frames long.
    assert not motion.foot_contacts(feet, FPS, speed_threshold=1.0, min_frames=3)[:, 0].any()
    blip = motion.foot_contacts(feet, FPS, speed_threshold=1.0, min_frames=2)[:, 0]
    assert np.array_equal(np.flatnonzero(blip), [10, 11])


PIN_RUNS = ([(0, 12), (26, 38)], [(10, 22), (36, 48)])       # double support and flight phases


def test_pin_feet_removes_skating():
    rng = np.random.default_rng(7)
    root_true, feet_true, contacts = _walk(PIN_RUNS)
    local = feet_true - root_true[:, None]
    t = np.arange(60)
    slide = np.stack([0.06 * np.sin(t / 7.0), 0.15 * np.sin(2 * np.pi * t / 40), 0.02 * np.cos(t / 5)], 1)
    root = root_true + slide + rng.normal(scale=0.003, size=(60, 3))
    before = motion.max_contact_slide(root[:, None] + local, contacts)
    fixed = motion.pin_feet(root, root[:, None] + local, contacts, blend_frames=3)
    after = motion.max_contact_slide(fixed[:, None] + local, contacts)
    assert before > 0.03
    assert after < 1e-9
    assert fixed.dtype == np.float64 and np.all(np.isfinite(fixed))
    # Around the flight phases the root moves about as fast as the walk itself (no jump).
    free = ~contacts.any(axis=1)
    steps = np.linalg.norm(np.diff(fixed, axis=0), axis=1)
    near_free = free[1:] | free[:-1]
    assert steps[near_free].max() < 1.5 * 0.04          # the walk's own speed is 4 cm/frame
    # Past the ease-out the correction is held: the character does not snap back.
    corr = fixed - root
    assert np.allclose(corr[52:], corr[52], atol=1e-12) and np.linalg.norm(corr[52]) > 0.01
    assert motion.max_contact_slide(fixed[:, None] + local, np.zeros((60, 2), bool)) == 0.0


def test_pin_feet_blend_smooths_the_velocity_kink():
    root_true, feet_true, contacts = _walk(PIN_RUNS)
    local = feet_true - root_true[:, None]
    root = root_true + np.arange(60)[:, None] * np.array([0.0, 0.01, 0.0])   # steady drift
    accel = {}
    for blend in (0, 3):
        fixed = motion.pin_feet(root, root[:, None] + local, contacts, blend_frames=blend)
        assert motion.max_contact_slide(fixed[:, None] + local, contacts) < 1e-12
        accel[blend] = np.abs(np.diff(fixed, 2, axis=0)).max()
    assert accel[3] * 2 < accel[0]
    assert np.isclose(accel[0], 0.01)


def test_pin_feet_without_contacts_is_identity():
    root = np.random.default_rng(8).normal(size=(10, 3))
    out = motion.pin_feet(root, root[:, None] + np.zeros((10, 2, 3)), np.zeros((10, 2), bool))
    assert np.array_equal(out, root)
