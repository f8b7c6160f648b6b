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
