"""Videos (issue 18, item 1): every run writes evaluation episode 0 as a video rendered by the
env (MP4 with an encoder installed, else GIF); pixel world models add their open-loop clip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reverie.cli import main
from reverie.diagnostics.video import video_suffix, write_video


def read_video(path: Path) -> tuple[int, tuple[int, int]]:
    """``(frames, (width, height))`` of an MP4 or GIF, read back from the file."""
    if path.suffix == ".gif":
        from PIL import Image

        with Image.open(path) as im:
            return im.n_frames, im.size
    import imageio.v3 as iio

    frames = iio.imread(path, plugin="FFMPEG" if pytest.importorskip("imageio_ffmpeg") else "pyav")
    return frames.shape[0], (frames.shape[2], frames.shape[1])


def test_a_gif_is_written_where_no_mp4_encoder_is_installed(tmp_path, monkeypatch):
    import reverie.diagnostics.video as video

    monkeypatch.setattr(video, "video_suffix", lambda: ".gif")
    path = write_video(torch.rand(5, 3, 10, 12), tmp_path / "clip.mp4", fps=5)
    assert path.suffix == ".gif" and read_video(path) == (5, (12, 10))


def test_mp4_when_an_encoder_is_installed(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    path = write_video(torch.rand(6, 3, 9, 13), tmp_path / "clip.mp4", fps=5)  # odd sides: padded
    assert path.suffix == ".mp4" and read_video(path) == (6, (14, 10))


def test_a_debug_run_writes_its_evaluation_episode_as_a_video(tmp_path, capsys):
    run = tmp_path / "pilco"
    assert main(["train", "pilco", "--preset", "debug", "trials=1", f"run_dir={run}", "progress=false"]) == 0
    path = run / "diagnostics" / f"eval_episode{video_suffix()}"
    assert f"Evaluation video: {path} (11 frames)" in capsys.readouterr().out
    # the reset frame and one per step of the 10-step evaluation episode, at the env's 320x160
    assert read_video(path) == (11, (320, 160))
    quiet = tmp_path / "no_video"
    assert main(["train", "pilco", "--preset", "debug", "trials=1", "video=false", f"run_dir={quiet}",
                 "progress=false"]) == 0
    assert not list((quiet / "diagnostics").glob("eval_episode.*"))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (run, quiet))
    assert a["eval/returns"] == b["eval/returns"]  # the video replays episode 0; nothing else changes


def test_the_video_replays_evaluation_episode_0(tmp_path):
    from reverie.algorithms import pets
    from reverie.runs import resolve_config
    from reverie.training import load_agent
    from reverie.training.video import record_episode

    run = tmp_path / "pets"
    summary = pets.train(resolve_config(pets.Config, ["debug"], [f"run_dir={run}", "progress=false",
                                                                 "video=false", "episodes=2"]))
    trained = load_agent(run)
    steps = trained.agent.schedule.eval_steps
    path, ret, frames = record_episode(trained.agent, pets.make_env, trained.config, steps, trained.config.seed,
                                       tmp_path / "ep")
    assert ret == summary["eval/returns"][0] and frames == steps + 1
    assert read_video(path) == (steps + 1, (250, 250))  # Pendulum's 500x500 frames, shrunk by 2
