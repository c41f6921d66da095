"""The MHR-70 labels the markers send must be the ones the model was trained with."""
from addon.scene.keypoints import KEYPOINT_INDEX, MHR70_NAMES


def test_labels_the_pipeline_depends_on() -> None:
    # The full-mode re-prompt uses exactly these labels (reference/sam3d-body.md §5.11).
    assert KEYPOINT_INDEX["right_wrist"] == 41 and KEYPOINT_INDEX["left_wrist"] == 62
    assert KEYPOINT_INDEX["right_elbow"] == 8 and KEYPOINT_INDEX["left_elbow"] == 7
    # Pelvis = mean of the hips (keypoint-token update).
    assert (KEYPOINT_INDEX["left_hip"], KEYPOINT_INDEX["right_hip"]) == (9, 10)
    assert KEYPOINT_INDEX["right_thumb_tip"] == 21 and KEYPOINT_INDEX["left_pinky_third_joint"] == 61
    assert MHR70_NAMES[-1] == "neck" and len(set(MHR70_NAMES)) == 70


def test_left_right_mirror() -> None:
    for name, i in KEYPOINT_INDEX.items():
        if name.startswith("left_"):
            assert "right_" + name[5:] in KEYPOINT_INDEX, name
