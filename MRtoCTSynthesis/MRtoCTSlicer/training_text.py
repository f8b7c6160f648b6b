"""Status and log lines of the training panel from the trainer's events (no Qt)."""
from .formatting import formatDuration
from .training_logic import LOSS_ORDER


def lossText(losses):
    """'G_total 3.21 · cycle 0.120 · D_ct 0.231' for the losses of an iteration event (the main ones first)."""
    names = [n for n in LOSS_ORDER if n in losses] + sorted(n for n in losses if n not in LOSS_ORDER)
    return " · ".join(f"{name} {losses[name]:.3g}" for name in names)


def progressText(process):
    """'Iteration 1200 of 5000 · 0.21 s/iteration (about 13 min 40 s left)' for a ``TrainingProcess``."""
    if not process.iterations:
        return "Starting (loading PyTorch, reading and caching the volumes)..."
    text = f"Iteration {process.iteration} of {process.iterations}"
    if process.seconds_per_iteration:
        text += f" · {process.seconds_per_iteration:.2f} s/iteration"
    if process.eta_seconds and process.iteration < process.iterations:
        text += f" (about {formatDuration(process.eta_seconds)} left)"
    return text


def eventText(event):
    """One log line for an event other than "iteration"; None for iteration events."""
    kind = event["event"]
    if kind == "start":
        where = f"on {event.get('device')}" + (f" x{event['world_size']}" if event.get("world_size", 1) > 1 else "")
        verb = "resumed at" if event.get("resumed") else "started at"
        return f"Training {verb} iteration {event.get('iteration')} of {event.get('iterations')} {where}"
    if kind == "warm_start":
        return f"Networks {', '.join(event.get('networks') or [])} start from {event.get('file')}"
    if kind == "checkpoint":
        return f"Checkpoint at iteration {event.get('iteration')}"
    if kind == "preview":
        return f"Preview at iteration {event.get('iteration')}"
    if kind == "validation":
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in (event.get("metrics") or {}).items())
        return f"Validation at iteration {event.get('iteration')}: {metrics}"
    if kind == "finished":
        return f"Finished after {formatDuration(event.get('seconds'))}: {event.get('model')}"
    if kind == "error":
        return f"Error: {event.get('message')}"
    return None


def stopText(process, reason=None):
    """The status line after Stop: where it stopped and what Resume will do."""
    why = f" because {reason}" if reason else ""
    if process.checkpoint_iteration:
        return (f"Stopped at iteration {process.iteration}{why}. Resume continues from the checkpoint at iteration "
                f"{process.checkpoint_iteration}.")
    return f"Stopped{why}, before the first checkpoint: Start begins again."


def runControls(state, ready, running):
    """What the run buttons allow for a run folder's ``RunState`` (None: no folder chosen or training now):
    {"text", "start", "resume", "startTip"}. ``ready``: the three folders are chosen."""
    occupied = bool(state and (state.has_checkpoint or state.finished))
    start = not running and ready and not (occupied or (state and state.running_pid))
    if running:
        text = "Training in this folder."
    elif state is None:
        text = "Choose a new or empty folder; its name becomes the model's name."
    else:
        text = state.summary()[0].upper() + state.summary()[1:] + "."
    tip = ("Check the data, then train a new model in the run folder" if start else
           "The run folder already holds a run: choose a new folder (or Resume)" if not running and occupied else
           "Choose the MR, CT and run folders")
    return {"text": text, "start": start, "startTip": tip,
            "resume": not running and bool(state and state.resumable and not state.running_pid)}
