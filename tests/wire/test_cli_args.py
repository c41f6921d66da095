"""The argparse types shared by both command lines: numbers are checked where they are typed."""
from __future__ import annotations

import argparse
import math

import pytest

from addon.protocol import cli_args


def test_whole_numbers_at_least_a_bound() -> None:
    at_least_1 = cli_args.int_at_least(1)
    assert at_least_1("3") == 3
    for text, says in (("0", "at least 1"), ("-2", "at least 1"), ("1.5", "whole number"), ("x", "whole number")):
        with pytest.raises(argparse.ArgumentTypeError, match=says):
            at_least_1(text)


def test_rates_and_strengths_are_finite() -> None:
    assert cli_args.positive_float("29.97") == 29.97
    assert cli_args.non_negative_float("0") == 0.0
    for parse, text in ((cli_args.positive_float, "0"), (cli_args.positive_float, "-1"),
                        (cli_args.positive_float, "nan"), (cli_args.positive_float, "inf"),
                        (cli_args.non_negative_float, "-0.5"), (cli_args.non_negative_float, "nan"),
                        (cli_args.non_negative_float, "fast")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert not math.isnan(cli_args.non_negative_float("1e3"))


def test_a_clip_frame_rate_is_checked_by_the_server_too(tmp_path) -> None:
    from server.errors import ServerError
    from server.video.source import open_clip

    for fps in (0.0, -24.0, float("nan")):
        with pytest.raises(ServerError, match="frame rate must be a number above 0"):
            open_clip(tmp_path, fps=fps)
