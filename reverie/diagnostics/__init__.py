"""World-model diagnostics: open-loop prediction plots and the multi-step prediction error table.

The usual entry point is :func:`run_diagnostics`, which writes ``imagined_vs_real.png``,
``prediction_error.png``, ``prediction_error.csv`` and ``prediction_error.md`` into a
folder and returns the errors dict. The pieces are available on their own:
:func:`open_loop_predict`, :func:`prediction_errors`, :func:`write_error_table`,
:func:`plot_open_loop` and :func:`plot_error_curve`. For RSSM (Dreamer) models,
:func:`imagine_open_loop` and :func:`plot_imagined_vs_real` compare decoded imagination
with real observations (:func:`write_video` animates frames); for Gaussian-belief (PILCO)
models, :func:`plot_belief_vs_real`.
"""

from reverie.diagnostics.belief import plot_belief_vs_real
from reverie.diagnostics.latent_imagination import (
    imagine_open_loop,
    plot_imagined_vs_real,
    write_latent_diagnostics,
)
from reverie.diagnostics.open_loop import (
    OpenLoopResult,
    decoded_observation,
    open_loop_predict,
    plot_error_curve,
    plot_open_loop,
    prediction_errors,
    run_diagnostics,
    write_error_table,
)
from reverie.diagnostics.video import write_video

__all__ = [
    "OpenLoopResult",
    "plot_belief_vs_real",
    "decoded_observation",
    "imagine_open_loop",
    "open_loop_predict",
    "plot_error_curve",
    "plot_imagined_vs_real",
    "plot_open_loop",
    "prediction_errors",
    "run_diagnostics",
    "write_error_table",
    "write_latent_diagnostics",
    "write_video",
]
