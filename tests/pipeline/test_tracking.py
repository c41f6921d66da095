"""The clip tracker: identities through crossings, gaps, new people, max_tracks, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from server.pipeline.tracking import Tracker, TrackerConfig, box_iou


def _person(cx: float, cy: float, w: float, h: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    # A stick figure: 17 points spread inside the box, with a little noise.
    u = np.linspace(0.1, 0.9, 17)
    kp = np.stack([cx + (u - 0.5) * w * 0.3 * np.sin(7 * u), cy - h / 2 + u * h], axis=1)
    return box + rng.normal(0, 1.0, 4), kp + rng.normal(0, 1.0, kp.shape)


def test_box_iou_known_values() -> None:
    a = np.array([[0, 0, 10, 10.0]])
    b = np.array([[0, 0, 10, 10.0], [20, 20, 30, 30], [5, 0, 15, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 0.0, 1 / 3]])


@pytest.mark.parametrize("same_size", [False, True])
def test_two_people_crossing_never_swap(same_size: bool) -> None:
    rng = np.random.default_rng(0)
    tracker = Tracker()
    truth_to_id: dict[int, int] = {}
    for t in range(60):
        people = [_person(100 + 10 * t, 300, 120, 300, rng),
                  _person(700 - 10 * t, 300, 120 if same_size else 100, 300 if same_size else 280, rng)]
        order = rng.permutation(2)
        ids = tracker.update(t, np.stack([people[k][0] for k in order]), np.stack([people[k][1] for k in order]))
        for slot, person in enumerate(order):
            assert truth_to_id.setdefault(int(person), int(ids[slot])) == ids[slot], f"swap at frame {t}"
    assert sorted(truth_to_id.values()) == [0, 1]


def test_a_short_gap_keeps_the_id_and_a_long_one_starts_a_new_track() -> None:
    rng = np.random.default_rng(1)
    tracker = Tracker(TrackerConfig(max_gap=10))
    for t in range(10):
        assert tracker.update(t, _person(100 + 8 * t, 300, 120, 300, rng)[0][None]).tolist() == [0]
    assert tracker.update(10, np.zeros((0, 4))).tolist() == []
    # Five frames unseen, back where the motion model puts the person.
    assert tracker.update(15, _person(100 + 8 * 15, 300, 120, 300, rng)[0][None]).tolist() == [0]
    assert tracker.update(40, _person(100 + 8 * 40, 300, 120, 300, rng)[0][None]).tolist() == [1]


def test_new_people_get_new_ids_and_max_tracks_drops_extras() -> None:
    rng = np.random.default_rng(2)
    tracker = Tracker()
    assert tracker.update(0, _person(100, 300, 120, 300, rng)[0][None]).tolist() == [0]
    two = np.stack([_person(100, 300, 120, 300, rng)[0], _person(600, 300, 120, 300, rng)[0]])
    assert tracker.update(1, two).tolist() == [0, 1]
    capped = Tracker(TrackerConfig(max_tracks=1))
    assert capped.update(0, two).tolist() == [0, -1]
    ids, boxes = capped.predicted_boxes(1)
    assert ids.tolist() == [0] and boxes.shape == (1, 4)


def test_bad_input_is_refused() -> None:
    tracker = Tracker()
    with pytest.raises(ValueError, match="x2>x1"):
        tracker.update(0, np.array([[10, 10, 5, 20.0]]))
    with pytest.raises(ValueError, match="keypoints"):
        tracker.update(0, np.array([[0, 0, 5, 20.0]]), np.zeros((2, 17, 2)))
    tracker.update(3, np.array([[0, 0, 5, 20.0]]))
    with pytest.raises(ValueError, match="increase"):
        tracker.update(3, np.array([[0, 0, 5, 20.0]]))
