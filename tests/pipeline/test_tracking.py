"""The clip tracker: identities through crossings, gaps, new people, max_tracks, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from server.pipeline.tracking import Tracker, TrackerConfig, box_iou

# A stick figure in unit-box coordinates (x right, y down): head, spine, arms, legs, 70 points.
_SEGMENTS = [((0.5, 0.02), (0.5, 0.12)), ((0.5, 0.12), (0.5, 0.5)), ((0.5, 0.2), (0.1, 0.45)),
             ((0.5, 0.2), (0.9, 0.45)), ((0.5, 0.5), (0.25, 0.98)), ((0.5, 0.5), (0.75, 0.98))]
_UNIT_FIGURE = np.concatenate([np.linspace(a, b, n) for (a, b), n in zip(_SEGMENTS, (10, 15, 11, 11, 12, 11))])
assert _UNIT_FIGURE.shape == (70, 2)


def _person(cx: float, cy: float, w: float, h: float, rng: np.random.Generator,
            missing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A detection: noisy box and its stick-figure keypoints, a fraction `missing` of them NaN."""
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]) + rng.normal(0, 1.0, 4)
    kp = np.array([cx - w / 2, cy - h / 2]) + _UNIT_FIGURE * [w, h] + rng.normal(0, 1.5, (70, 2))
    kp[rng.random(70) < missing] = np.nan
    return box, kp


def _frame(people: list[tuple[np.ndarray, np.ndarray]], order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([people[k][0] for k in order]), np.stack([people[k][1] for k in order])


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10.0], [0, 0, 2, 2]])
    b = np.array([[0, 0, 10, 10.0], [20, 20, 30, 30], [5, 0, 15, 10], [0, 0, 10, 5]])
    expected = [[1.0, 0.0, 1 / 3, 0.5], [0.04, 0.0, 0.0, 0.08]]
    np.testing.assert_allclose(box_iou(a, b), expected)
    assert box_iou(a, np.zeros((0, 4))).shape == (2, 0)
    np.testing.assert_allclose(box_iou(b, a), np.transpose(expected))


def test_one_person_moving_smoothly_keeps_id_0() -> None:
    rng = np.random.default_rng(10)
    tracker = Tracker()
    for t in range(50):
        # Curving, speeding up and walking towards the camera (growing).
        cx, cy, scale = 200 + 6 * t + 0.08 * t ** 2, 300 + 40 * np.sin(t / 8), 1 + t / 100
        box, kp = _person(cx, cy, 100 * scale, 260 * scale, rng, missing=0.1)
        assert tracker.update(t, box[None], kp[None]).tolist() == [0], f"frame {t}"
    ids, predicted = tracker.predicted_boxes(50)
    assert ids.tolist() == [0] and predicted.shape == (1, 4)
    assert tracker.lost(49) == [] and tracker.lost(50) == [0]


@pytest.mark.parametrize("same_size", [False, True])
@pytest.mark.parametrize("with_keypoints", [True, False])
def test_two_people_crossing_never_swap(same_size: bool, with_keypoints: bool) -> None:
    """A walks left to right, B right to left at the same height; their boxes overlap fully.

    They coincide at frame 30.5: at an exact coincidence nothing but noise could tell two
    same-sized people apart. One frame after the crossing each person's *last* box lies on the
    other person (and, for the slightly different sizes, fits the other one's size better too),
    so only the motion prediction keeps the ids right; shuffled detection order rules out luck.
    """
    rng = np.random.default_rng(0)
    tracker = Tracker()
    bw, bh = (120, 300) if same_size else (110, 285)
    truth_to_id: dict[int, int] = {}
    for t in range(60):
        people = [_person(100 + 10 * t, 300, 120, 300, rng, missing=0.1),
                  _person(710 - 10 * t, 300, bw, bh, rng, missing=0.1)]
        order = rng.permutation(2)
        boxes, kps = _frame(people, order)
        ids = tracker.update(t, boxes, kps if with_keypoints else None)
        for slot, person in enumerate(order):
            assert truth_to_id.setdefault(int(person), int(ids[slot])) == ids[slot], f"swap at frame {t}"
    assert truth_to_id == {0: 0, 1: 1} or truth_to_id == {0: 1, 1: 0}
    assert tracker.predicted_boxes(60)[0].tolist() == [0, 1]


def test_a_short_gap_keeps_the_id_and_a_long_one_starts_a_new_track() -> None:
    rng = np.random.default_rng(1)
    tracker = Tracker(TrackerConfig(max_gap=10))
    # 20 px a frame: after the gap the person is a full box width away from the last box,
    # so only the prediction finds them again.
    x = lambda t: 100 + 20 * t  # noqa: E731
    for t in range(10):
        box, kp = _person(x(t), 300, 120, 300, rng)
        assert tracker.update(t, box[None], kp[None]).tolist() == [0]
    for t in range(10, 15):  # missing for 5 frames: an empty detection list, or no call at all
        if t % 2 == 0:
            assert tracker.update(t, np.zeros((0, 4)), np.zeros((0, 70, 2))).tolist() == []
        assert tracker.lost(t) == [0]
        np.testing.assert_allclose(tracker.predicted_boxes(t)[1][0], [x(t) - 60, 150, x(t) + 60, 450], atol=12)
    box, kp = _person(x(15), 300, 120, 300, rng)
    assert tracker.update(15, box[None], kp[None]).tolist() == [0]
    assert tracker.lost(15) == []

    # Unseen for 11 frames > max_gap: the track has ended even where its prediction was right.
    assert tracker.lost(26) == [] and tracker.predicted_boxes(26)[0].tolist() == []
    box, kp = _person(x(27), 300, 120, 300, rng)
    assert tracker.update(27, box[None], kp[None]).tolist() == [1]


def test_a_person_far_from_every_prediction_gets_a_new_id() -> None:
    tracker = Tracker()
    tracker.update(0, np.array([[100, 100, 200, 400.0]]))
    # Without keypoints, too: the box centres stand in for them and the gate still holds.
    assert tracker.update(1, np.array([[250, 100, 350, 400.0]])).tolist() == [1]
    assert tracker.lost(1) == [0]


def test_a_new_person_entering_mid_clip_gets_a_new_id() -> None:
    rng = np.random.default_rng(2)
    tracker = Tracker()
    for t in range(40):
        people = [_person(200 + 3 * t, 300, 120, 300, rng)]
        if t >= 20:
            people.append(_person(900 - 5 * (t - 20), 320, 110, 280, rng))
        order = rng.permutation(len(people))
        ids = tracker.update(t, *_frame(people, order))
        assert ids[np.argsort(order)].tolist() == ([0] if t < 20 else [0, 1]), f"frame {t}"


def test_max_tracks_drops_extra_people_until_a_track_ends() -> None:
    rng = np.random.default_rng(3)
    tracker = Tracker(TrackerConfig(max_tracks=1, max_gap=5))
    for t in range(10):
        people = [_person(200 + 3 * t, 300, 120, 300, rng), _person(700, 300, 120, 300, rng)]
        assert tracker.update(t, *_frame(people, np.arange(2))).tolist() == [0, -1]
    assert tracker.predicted_boxes(10)[0].tolist() == [0]
    # The first person leaves; once their track ends, the other person takes the free slot.
    # Last seen at frame 9, so with max_gap=5 the track lives through frame 14.
    for t in range(10, 15):
        assert tracker.update(t, *_frame([_person(700, 300, 120, 300, rng)], np.arange(1))).tolist() == [-1]
    assert tracker.update(15, *_frame([_person(700, 300, 120, 300, rng)], np.arange(1))).tolist() == [1]


@pytest.mark.parametrize("boxes, keypoints, message", [
    (np.zeros((2, 3)), None, r"\(N, 4\)"),
    (np.zeros(4), None, r"\(N, 4\)"),
    (np.array([[0, 0, np.nan, 10.0]]), None, "finite"),
    (np.array([[0, 0, np.inf, 10.0]]), None, "finite"),
    (np.array([[10, 10, 5, 20.0]]), None, "x1 > x0"),
    (np.array([[0, 10, 5, 10.0]]), None, "y1 > y0"),
    (np.array([[0, 0, 5, 20.0]]), np.zeros((2, 70, 2)), "keypoints"),
    (np.array([[0, 0, 5, 20.0]]), np.zeros((1, 70, 3)), "keypoints"),
    (np.array([[0, 0, 5, 20.0]]), np.zeros((70, 2)), "keypoints"),
])
def test_bad_detections_are_refused(boxes: np.ndarray, keypoints: np.ndarray | None, message: str) -> None:
    tracker = Tracker()
    with pytest.raises(ValueError, match=message):
        tracker.update(0, boxes, keypoints)
    # A refused frame changes nothing: the same frame number is still accepted.
    assert tracker.update(0, np.array([[0, 0, 5, 20.0]])).tolist() == [0]


def test_frames_must_increase_and_configs_must_make_sense() -> None:
    tracker = Tracker()
    tracker.update(3, np.array([[0, 0, 5, 20.0]]))
    for frame in (3, 2):
        with pytest.raises(ValueError, match="increase strictly"):
            tracker.update(frame, np.array([[0, 0, 5, 20.0]]))
    with pytest.raises(ValueError, match="integer"):
        tracker.update(4.5, np.array([[0, 0, 5, 20.0]]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="look back"):
        tracker.predicted_boxes(2)
    assert tracker.update(np.int64(4), np.array([[0, 0, 5, 20.0]])).tolist() == [0]
    for bad in (dict(max_gap=-1), dict(max_tracks=0), dict(max_cost=0.0), dict(iou_weight=0.0, keypoint_weight=0.0),
                dict(iou_weight=-1.0)):
        with pytest.raises(ValueError, match="TrackerConfig"):
            TrackerConfig(**bad)
