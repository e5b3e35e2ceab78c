"""Multi-seed learning-curve figures (issue 18, item 3): threshold line, mean and spread,
legends that name algorithm, env and seed, no constant or timing panels."""

from __future__ import annotations

import json

from reverie.runs import plot_learning_curves, read_metrics
from reverie.runs.plots import _labels, _mean_band, plotted_metrics


def _run(folder, algo, env, seed, rows):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"algo": algo, "config": {"env": env, "seed": seed}}))
    (folder / "metrics.csv").write_text("step,name,value\n" + "".join(f"{s},{n},{v}\n" for s, n, v in rows))
    return folder


def test_constant_and_timing_panels_are_left_out_unless_asked(tmp_path):
    run = _run(tmp_path / "a", "dreamer", "Pendulum-v1", 0, [
        (10, "eval/return", -900), (20, "eval/return", -300), (10, "train/kl", 3.0), (20, "train/kl", 3.0),
        (10, "train/policy_s", 4.2), (20, "train/policy_s", 5.0), (10, "train/loss_actor", 1.0),
        (20, "train/loss_actor", 0.5)])
    runs = [read_metrics(run)]
    assert plotted_metrics(runs) == ["eval/return", "train/loss_actor"]  # KL pinned at free nats: out
    assert plotted_metrics(runs, ["train/*"]) == ["train/kl", "train/loss_actor", "train/policy_s"]


def test_legends_name_algorithm_env_and_seed(tmp_path):
    a = _run(tmp_path / "runs/pets/Pendulum-v1/20260101-000000-s0", "pets", "Pendulum-v1", 0, [(1, "eval/return", 1)])
    b = _run(tmp_path / "runs/worldmodel/Pendulum-v1/20260101-000000-s0", "worldmodel", "Pendulum-v1", 0,
             [(1, "eval/return", 2)])
    assert _labels([a / "metrics.csv", b / "metrics.csv"]) == ["pets · Pendulum-v1 · seed 0",
                                                                "worldmodel · Pendulum-v1 · seed 0"]


def test_mean_and_band_over_the_steps_every_run_logged():
    series = [([1, 2, 3], [0.0, 2.0, 4.0]), ([1, 2, 3, 4], [2.0, 4.0, 6.0, 9.0])]
    assert _mean_band(series) == ([1, 2, 3], [1.0, 3.0, 5.0], [0.0, 2.0, 4.0], [2.0, 4.0, 6.0])
    assert _mean_band(series[:1]) is None  # one run: no band


def test_a_multi_seed_figure_is_written(tmp_path):
    runs = [_run(tmp_path / f"s{s}", "pets", "Pendulum-v1", s, [(100, "eval/return", -900 + s),
                                                                  (200, "eval/return", -150 - s)])
            for s in range(3)]
    out = plot_learning_curves(runs, tmp_path / "curves.png", threshold=-200.0, title="pets: 3 seeds")
    assert out.stat().st_size > 10_000
