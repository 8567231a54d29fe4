"""Which frames of a video to keep: the rules (:class:`FrameSampling`) and the decider (:class:`FrameSelector`).

The selector sees frames in time order with a cheap signature each and
answers "keep (first / interval / scene)" or "skip"; it also tells the
decoding loop how early a frame may still be useful, so that the loop can
skip or seek over what no rule needs. It never touches a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .video_pixels import Signature

__all__ = ["FrameSampling", "FrameSelector", "Reason", "Strategy"]

Strategy = Literal["auto", "sequential", "keyframes", "seek"]
Reason = Literal["first", "interval", "scene"]


@dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video to keep. Times in seconds; distances on [0, 1] thumbnails.

    * ``interval``: a frame about this often. 2 s is about the length of a
      "moment" (a jump, a candle blown out): a hit starts playing within a
      second or so of it, at 30 frames per minute of video.
    * ``max_frames``: the cap per video; a longer video stretches the
      interval so the cap covers all of it (a 1-hour video: one every 30 s).
    * ``min_gap``: never two kept frames closer than this.
    * ``scene_threshold``: a colour-histogram distance from the previous
      scanned frame that counts as a cut (None: no scene detection);
      ``scene_step``: how often to scan when every frame is decoded.
    * ``still_threshold``: skip a frame this close (mean pixel difference) to
      the last kept one: a tripod shot or a paused screen costs one frame.
    * ``flat_threshold``: frames whose brightness spread is below this are
      black or flat (fades, lens caps) and never kept while others exist.
    * ``min_side``: kept pictures are scaled down to this shorter side; 256
      covers the usual 224- and 256-pixel model inputs without upscaling.
    * ``strategy``: how to decode (``auto`` picks; the others are for
      measurements and tests): ``sequential`` every frame, ``keyframes``
      keyframes unless they are too sparse, ``seek`` like keyframes but
      jumping over any stretch longer than a group of pictures.
    * ``max_decode_seconds``: wall time one video may spend decoding (the
      caller's time between frames does not count); ``threads``: decoder
      threads, 0 lets FFmpeg decide.
    """

    interval: float = 2.0
    min_gap: float = 0.5
    max_frames: int = 120
    scene_threshold: float | None = 0.3
    scene_step: float = 0.25
    still_threshold: float = 0.01
    flat_threshold: float = 0.03
    min_side: int = 256
    strategy: Strategy = "auto"
    max_decode_seconds: float = 300.0
    threads: int = 0

    def __post_init__(self) -> None:
        if not (self.interval > 0 and math.isfinite(self.interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {self.interval}")
        if not (0 <= self.min_gap < math.inf):
            raise ValueError(f"min_gap must be >= 0, got {self.min_gap}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.scene_threshold is not None and not 0 < self.scene_threshold <= 1:
            raise ValueError(f"scene_threshold must be in (0, 1] or None, got {self.scene_threshold}")
        if self.scene_step < 0 or not 0 <= self.still_threshold < 1 or not 0 <= self.flat_threshold < 1:
            raise ValueError("scene_step, still_threshold and flat_threshold must be >= 0 (thresholds < 1)")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.strategy not in ("auto", "sequential", "keyframes", "seek"):
            raise ValueError(f"strategy must be auto, sequential, keyframes or seek, not {self.strategy!r}")
        if not self.max_decode_seconds > 0:
            raise ValueError(f"max_decode_seconds must be > 0, got {self.max_decode_seconds}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: FFmpeg decides), got {self.threads}")


class FrameSelector:
    """Decides, frame by frame, which frames to keep (see :class:`FrameSampling`).

    Interval frames follow a grid (every ``interval`` seconds from the last
    scene start), so accepting a keyframe a little early never makes the
    spacing drift. How early is "on time" depends on the frames on offer
    (``spacing``): half their spacing, so that the one nearest the due time
    is kept, and at most half an interval.
    """

    def __init__(self, sampling: FrameSampling, duration: float | None, fps: float) -> None:
        self.s = sampling
        self.duration = duration if duration and duration > 0 else None
        # Long videos: stretch the interval so max_frames covers the whole duration.
        self.interval = max(sampling.interval, (self.duration or 0.0) / sampling.max_frames)
        self.frame_spacing = 1.0 / fps
        self.count = 0
        self.last_time = -math.inf
        self.last_kept: Signature | None = None
        self.previous: Signature | None = None
        self.pending_scene = False
        self.next_due = 0.0

    def tolerance(self, spacing: float) -> float:
        """How early an interval frame may be when the frames on offer are ``spacing`` apart."""
        return 0.5 * min(self.interval, spacing)

    @property
    def full(self) -> bool:
        return self.count >= self.s.max_frames

    def _budget_time(self) -> float:
        """When the spread-over-the-duration budget allows the next frame (the cap's share of time so far)."""
        return self.count * self.duration / self.s.max_frames if self.duration else 0.0

    def target(self) -> float:
        """The ideal time of the next interval frame."""
        return max(self.next_due, self.last_time + self.s.min_gap, self._budget_time())

    def earliest_useful(self, spacing: float) -> float | None:
        """The earliest time a frame ``spacing`` apart from others could be kept (None: the cap is reached)."""
        if self.full:
            return None
        if self.count == 0:
            return -math.inf
        return self.target() - self.tolerance(spacing)

    def due(self, t: float, spacing: float) -> bool:
        """True when an interval frame at ``t`` would be on time."""
        return self.count == 0 or t >= self.next_due - self.tolerance(spacing)

    def needs_inside(self, start: float, end: float) -> bool:
        """Whether frames between the keyframes at ``start`` and ``end`` are needed by the interval rule.

        Not when the due time nearest after ``start`` is at most half the
        keyframe spacing (or half an interval) from a keyframe. Before the
        first kept frame, the keyframe at ``start`` is expected to become it.
        """
        tol = self.tolerance(end - start)
        if self.count == 0:
            target = start + self.interval
        else:
            target = self.target()
            if target - tol <= start:  # this keyframe serves the current due time; what about the next?
                target = target + self.interval if start < target + self.interval / 2 else start + self.interval
        return end > target + tol

    def needed_before(self, t: float, next_key: float) -> bool:
        """Whether a frame after ``t`` and before the keyframe expected at ``next_key`` may still be kept."""
        if self.count == 0:
            return True  # still looking for the first frame that is not flat
        return self.target() + self.tolerance(next_key - t) < next_key

    def jumped(self) -> None:
        """A seek happened: the next frame is not a successor of the previous one."""
        self.previous = None

    def consider(self, t: float, sig: Signature, spacing: float) -> Reason | None:
        """Whether to keep the frame at ``t`` (and why); updates the state when it is kept."""
        s = self.s
        scene = (s.scene_threshold is not None and self.previous is not None
                 and sig.scene_distance(self.previous) >= s.scene_threshold)
        self.previous = sig
        if scene:
            self.pending_scene = True
        if sig.spread < s.flat_threshold or self.full:
            return None
        tol = self.tolerance(spacing)
        reason: Reason
        if self.count == 0:
            reason = "first"
        else:
            if t - self.last_time < s.min_gap or t + tol + 1e-6 < self._budget_time():
                return None
            assert self.last_kept is not None
            if sig.distance(self.last_kept) < s.still_threshold:
                self.pending_scene = False  # the "change" came back to the picture already kept
                return None
            if self.pending_scene:
                reason = "scene"
            elif t >= self.next_due - tol:
                reason = "interval"
            else:
                return None
        if reason == "interval" and t < self.next_due + self.interval / 2:
            self.next_due += self.interval  # stay on the grid
        else:
            self.next_due = t + self.interval  # a new scene (or a late frame) restarts the grid
        self.count += 1
        self.last_time = t
        self.last_kept = sig
        self.pending_scene = False
        return reason
